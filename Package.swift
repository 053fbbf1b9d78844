// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "swift-libmemcached",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "Memcached", targets: ["Memcached"]),
        .library(name: "MemcachedTestSupport", targets: ["MemcachedTestSupport"]),
        .executable(name: "QuickStart", targets: ["QuickStart"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-distributed-tracing", from: "1.7.3"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.3"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        // Only for `swift package generate-documentation`: a plugin, never linked into a product.
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
    ],
    targets: [
        .systemLibrary(
            name: "CLibMemcached",
            pkgConfig: "libmemcached",
            providers: [.apt(["libmemcached-dev"]), .brew(["libmemcached"])]
        ),
        .systemLibrary(
            name: "CZlib",
            pkgConfig: "zlib",
            providers: [.apt(["zlib1g-dev"]), .brew(["zlib"])]
        ),
        .target(
            name: "Memcached",
            dependencies: [
                "CLibMemcached",
                "CZlib",
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
            ]
        ),
        .target(
            name: "MemcachedTestSupport",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        .executableTarget(
            name: "QuickStart",
            dependencies: ["Memcached"],
            path: "Examples/QuickStart"
        ),
        // A separate process for the cross-process stampede test; the test target depends on it
        // so that `swift test` builds it next to the test bundle.
        .executableTarget(
            name: "CacheAsideProbe",
            dependencies: ["Memcached"],
            path: "Tests/CacheAsideProbe"
        ),
        .testTarget(
            name: "MemcachedTests",
            dependencies: [
                "Memcached", "MemcachedTestSupport", "CLibMemcached", "CacheAsideProbe",
                .product(name: "InMemoryTracing", package: "swift-distributed-tracing"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "MetricsTestKit", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
            ]
        ),
    ]
)

for target in package.targets where target.type != .system {
    var settings = target.swiftSettings ?? []
    settings.append(.enableUpcomingFeature("MemberImportVisibility"))
    settings.append(.enableUpcomingFeature("ExistentialAny"))
    settings.append(.enableUpcomingFeature("InternalImportsByDefault"))
    target.swiftSettings = settings
}
