// swift-tools-version:6.1
import PackageDescription

// A package of its own so that users of the library never build it. It depends on the library by
// path; `name:` is needed because the checkout folder's name differs from machine to machine.
let package = Package(
    name: "swift-libmemcached-benchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "swift-libmemcached", path: "../"),
        // Per-command latency percentiles (the latency table).
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
    ],
    targets: [
        // The raw libmemcached loops the Swift API is compared with, and the process-wide malloc
        // counter. libmemcached's headers come from the system (libmemcached-dev).
        .target(
            name: "CRawBench",
            linkerSettings: [.linkedLibrary("memcached"), .linkedLibrary("pthread")]
        ),
        .executableTarget(
            name: "MemcachedBench",
            dependencies: [
                "CRawBench",
                .product(name: "Memcached", package: "swift-libmemcached"),
                .product(name: "MemcachedTestSupport", package: "swift-libmemcached"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ]
        ),
    ]
)

for target in package.targets where target.name != "CRawBench" {
    var settings = target.swiftSettings ?? []
    settings.append(.enableUpcomingFeature("MemberImportVisibility"))
    settings.append(.enableUpcomingFeature("ExistentialAny"))
    settings.append(.enableUpcomingFeature("InternalImportsByDefault"))
    target.swiftSettings = settings
}
