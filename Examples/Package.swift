// swift-tools-version:6.1
// The examples that need more than the library: FilmCache, the MySQL manual's cache-aside program
// (python-memcached section) on SQLite through GRDB or on MariaDB through libmariadb, and
// FilmService, the same lookup as a Hummingbird web service with sessions and Prometheus metrics.
//
// A package of its own so that GRDB, swift-argument-parser, libmariadb, Hummingbird and Prometheus
// never enter the dependency graph of the library's users. QuickStart, which needs nothing else, stays in the root
// package (`swift run QuickStart`); every target here sets its `path` so none claims its folder.
//
//     swift run --package-path Examples FilmCache
//     swift run --package-path Examples FilmService
import PackageDescription

let package = Package(
    name: "swift-libmemcached-examples",
    platforms: [.macOS(.v15)],
    dependencies: [
        // Named, because a path dependency's identity is its folder's name, which differs between
        // clones (main, swift-libmemcached, ...); the name keeps the product reference stable.
        .package(name: "swift-libmemcached", path: "../"),
        .package(name: "swift-libmemcached-hummingbird", path: "../Integrations/HummingbirdMemcached"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
    ],
    targets: [
        .systemLibrary(
            name: "CMariaDB",
            path: "CMariaDB",
            pkgConfig: "libmariadb",
            providers: [.apt(["libmariadb-dev"]), .brew(["mariadb-connector-c"])]
        ),
        // The sample film table and the SQLite store, shared by both programs.
        .target(
            name: "Sakila",
            dependencies: [
                .product(name: "Memcached", package: "swift-libmemcached"),
                .product(name: "GRDB", package: "GRDB.swift"),
            ],
            path: "Sakila"
        ),
        .executableTarget(
            name: "FilmCache",
            dependencies: [
                "CMariaDB",
                "Sakila",
                .product(name: "Memcached", package: "swift-libmemcached"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "FilmCache"
        ),
        .executableTarget(
            name: "FilmService",
            dependencies: [
                "Sakila",
                .product(name: "Memcached", package: "swift-libmemcached"),
                .product(name: "HummingbirdMemcached", package: "swift-libmemcached-hummingbird"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            path: "FilmService"
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
