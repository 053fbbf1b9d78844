// swift-tools-version:6.1
// Hummingbird's persist driver on memcached, in a package of its own so that the library's users
// never build Hummingbird unless they use it. A project depends on it from a checkout, by path:
//
//     .package(path: "../swift-libmemcached/Integrations/HummingbirdMemcached"),
//     .product(name: "HummingbirdMemcached", package: "swift-libmemcached-hummingbird")
import PackageDescription

let package = Package(
    name: "swift-libmemcached-hummingbird",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "HummingbirdMemcached", targets: ["HummingbirdMemcached"])
    ],
    dependencies: [
        // Named, because a path dependency's identity is its folder's name, which differs between
        // clones; the name keeps the product references stable.
        .package(name: "swift-libmemcached", path: "../../"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/hummingbird-project/hummingbird-auth", from: "2.5.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
    ],
    targets: [
        .target(
            name: "HummingbirdMemcached",
            dependencies: [
                .product(name: "Memcached", package: "swift-libmemcached"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .testTarget(
            name: "HummingbirdMemcachedTests",
            dependencies: [
                "HummingbirdMemcached",
                .product(name: "Memcached", package: "swift-libmemcached"),
                .product(name: "MemcachedTestSupport", package: "swift-libmemcached"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdAuth", package: "hummingbird-auth"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
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
