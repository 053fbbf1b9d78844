// swift-tools-version:6.1
// The examples that need more than the library: FilmCache, the MySQL manual's cache-aside program
// (python-memcached section) on SQLite through GRDB or on MariaDB through libmariadb.
//
// A package of its own so that GRDB, swift-argument-parser and libmariadb never enter the
// dependency graph of the library's users. QuickStart, which needs nothing else, stays in the root
// package (`swift run QuickStart`); every target here sets its `path` so none claims its folder.
//
//     swift run --package-path Examples FilmCache
import PackageDescription

let package = Package(
    name: "swift-libmemcached-examples",
    platforms: [.macOS(.v15)],
    dependencies: [
        // Named, because a path dependency's identity is its folder's name, which differs between
        // clones (main, swift-libmemcached, ...); the name keeps the product reference stable.
        .package(name: "swift-libmemcached", path: "../"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
    ],
    targets: [
        .systemLibrary(
            name: "CMariaDB",
            path: "CMariaDB",
            pkgConfig: "libmariadb",
            providers: [.apt(["libmariadb-dev"])]
        ),
        .executableTarget(
            name: "FilmCache",
            dependencies: [
                "CMariaDB",
                .product(name: "Memcached", package: "swift-libmemcached"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "FilmCache"
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
