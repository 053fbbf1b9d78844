// swift-tools-version:6.1
// Vapor's cache and sessions drivers on memcached, in a package of its own so that the library's
// users never build Vapor unless they use it. A project depends on it from a checkout, by path:
//
//     .package(path: "../swift-libmemcached/Integrations/VaporMemcached"),
//     .product(name: "VaporMemcached", package: "swift-libmemcached-vapor")
import PackageDescription

let package = Package(
    name: "swift-libmemcached-vapor",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "VaporMemcached", targets: ["VaporMemcached"])
    ],
    dependencies: [
        // Named, because a path dependency's identity is its folder's name, which differs between
        // clones; the name keeps the product references stable.
        .package(name: "swift-libmemcached", path: "../../"),
        .package(url: "https://github.com/vapor/vapor", from: "4.122.3"),
    ],
    targets: [
        .target(
            name: "VaporMemcached",
            dependencies: [
                .product(name: "Memcached", package: "swift-libmemcached"),
                .product(name: "Vapor", package: "vapor"),
            ]
        ),
        .testTarget(
            name: "VaporMemcachedTests",
            dependencies: [
                "VaporMemcached",
                .product(name: "Memcached", package: "swift-libmemcached"),
                .product(name: "MemcachedTestSupport", package: "swift-libmemcached"),
                .product(name: "VaporTesting", package: "vapor"),
            ]
        ),
    ]
)

for target in package.targets {
    var settings = target.swiftSettings ?? []
    settings.append(.enableUpcomingFeature("MemberImportVisibility"))
    settings.append(.enableUpcomingFeature("ExistentialAny"))
    settings.append(.enableUpcomingFeature("InternalImportsByDefault"))
    target.swiftSettings = settings
}
