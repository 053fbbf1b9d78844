// The cache-aside program of the MySQL manual's "Using MySQL and memcached with Python", in Swift:
// read the top five films by rental rate from memcached, or from the database on a miss and then
// cache them for a minute.
//
//     swift run --package-path Examples FilmCache            # SQLite, created on first run
//     swift run --package-path Examples FilmCache --mysql mysql://sakila:password@127.0.0.1:3306/sakila

import ArgumentParser
import Foundation
import Logging
import Memcached
import Sakila

@main
struct FilmCache: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "FilmCache",
        abstract: "Caches the top five films by rental rate in memcached, as the MySQL manual's Python example does.",
        discussion: """
            The first run reads the film table from the database, stores the rows in memcached under \
            the key top5films for --expiry seconds (JSON, flag 1: python-memcached reads them with a JSON \
            unpickler) and prints "Updated memcached with SQLite data" (or MariaDB). A run within the \
            expiry prints "Loaded data from memcached" and the rows. Every run prints how long the \
            lookup took.

            Without --mysql the database is a SQLite file that is created with 300 sample films on first \
            use. The default file is $XDG_CACHE_HOME/swift-libmemcached/FilmCache/sakila.sqlite \
            (~/.cache when XDG_CACHE_HOME is not set); delete it to start over.

            If memcached cannot be reached the program still answers from the database, with a warning.
            """
    )

    /// The seed's key.
    static let cacheKey = "top5films"

    @Option(
        help: ArgumentHelp(
            "memcached servers, comma-separated (default: $MEMCACHED_SERVERS, then 127.0.0.1:11211).",
            valueName: "host:port,..."
        )
    )
    var servers: String?

    @Option(help: ArgumentHelp("How long the cached rows live in memcached.", valueName: "seconds"))
    var expiry = 60

    @Flag(help: "Read the database even when the rows are cached, and cache them again.")
    var refresh = false

    @Option(
        help: ArgumentHelp(
            "The SQLite file (default: $XDG_CACHE_HOME/swift-libmemcached/FilmCache/sakila.sqlite).",
            valueName: "path"
        )
    )
    var database: String?

    @Option(
        help: ArgumentHelp(
            "Read MariaDB or MySQL instead of SQLite: mysql://user:password@host:port/database, or "
                + "mysql://user:password@localhost/database?socket=/path/to/mysqld.sock.",
            valueName: "url"
        ),
        transform: { try MySQLURL(parsing: $0) }
    )
    var mysql: MySQLURL?

    @Flag(
        name: .customLong("print-sql"),
        help: "Print the SQL that creates and fills the sample film table (for MariaDB or MySQL) and exit."
    )
    var printSQL = false

    @Flag(help: "Log every memcached command to standard error, as python-memcached's debug=1.")
    var debug = false

    func validate() throws {
        guard expiry >= 1 else {
            // The library reads 0 as "already expired", not memcached's "never": refuse it rather
            // than cache rows that are gone at once.
            throw ValidationError("--expiry must be at least 1 second.")
        }
        guard mysql == nil || database == nil else {
            throw ValidationError("Use either --database (SQLite) or --mysql (MariaDB), not both.")
        }
    }

    func run() async throws {
        if printSQL {
            print(SampleFilms.sqlScript, terminator: "")
            return
        }

        var configuration = try MemcachedConfiguration(servers: serverList)
        if debug {
            var logger = Logger(label: "FilmCache") { StreamLogHandler.standardError(label: $0) }
            logger.logLevel = .trace
            configuration.logger = logger
        }
        let client = try MemcachedClient(configuration: configuration)
        do {
            try await lookUp(with: client)
            await client.close()
        } catch {
            await client.close()
            throw error
        }
    }

    /// The seed's cache-aside lookup in one call: memcached first, the database on a miss, its rows
    /// cached for --expiry seconds. A cache that fails is a miss, not a failed program.
    private func lookUp(with client: MemcachedClient) async throws {
        var stopwatch = Stopwatch()
        let lookup: MemcachedCacheAsideResult<[Film]>
        if refresh {
            let films = try topFilms(&stopwatch)
            let store: MemcachedKeyOutcome
            do {
                store = try await client.set(Self.cacheKey, films, expiration: .seconds(expiry)) ? .applied : .declined
            } catch {
                store = .failed(
                    error as? MemcachedError ?? MemcachedError(code: .timeout, message: "cancelled: \(error)")
                )
            }
            lookup = MemcachedCacheAsideResult(value: films, source: .loaded, store: store)
        } else {
            lookup = try await client.cacheAside(Self.cacheKey, expiration: .seconds(expiry)) {
                // Opened only on a miss, so a cached run never touches the database.
                try topFilms(&stopwatch)
            }
        }
        let total = stopwatch.elapsed

        if let error = lookup.readError {
            // A read that failed first may be followed by one that found the rows.
            let instead = lookup.source == .loaded ? ", reading the database instead" : ""
            warn("cannot read \(Self.cacheKey) from memcached\(instead): \(error)")
        }
        switch lookup.store {
        case nil:
            print("Loaded data from memcached")
            printRows(lookup.value)
        case .applied:
            print("Updated memcached with \(databaseName) data")
        case .declined:
            warn("memcached did not store \(Self.cacheKey)")
            print("Loaded data from \(databaseName); memcached was not updated")
            printRows(lookup.value)
        case .failed(let error):
            warn("cannot update memcached: \(error)")
            print("Loaded data from \(databaseName); memcached was not updated")
            printRows(lookup.value)
        }
        print(stopwatch.summary(total: total, rest: "memcached"))
    }

    /// Reads the top five films from the database, timing each step.
    private func topFilms(_ stopwatch: inout Stopwatch) throws -> [Film] {
        let store: any FilmStore
        if let mysql {
            store = try stopwatch.measure("\(databaseName) connect") { try MariaDBFilmStore(url: mysql) }
        } else {
            let path = database ?? SQLiteFilmStore.defaultPath
            let sqlite = try stopwatch.measure("\(databaseName) open") { try SQLiteFilmStore(path: path) }
            if sqlite.createdTable {
                print("Created the film table (\(SampleFilms.count) films) in \(path)")
            }
            store = sqlite
        }
        return try stopwatch.measure("\(databaseName) query") { try store.topFilms(limit: 5) }
    }

    /// The servers from `--servers`, else `MEMCACHED_SERVERS`, else the seed's 127.0.0.1:11211.
    private var serverList: [String] {
        let environment = ProcessInfo.processInfo.environment["MEMCACHED_SERVERS"].flatMap { $0.isEmpty ? nil : $0 }
        return (servers ?? environment ?? "127.0.0.1:11211")
            .split(separator: ",")
            .map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { !$0.isEmpty }
    }

    /// The word in "Updated memcached with ... data".
    private var databaseName: String {
        mysql == nil ? "SQLite" : "MariaDB"
    }

    private func printRows(_ films: [Film]) {
        for film in films {
            print("\(film.filmID), \(film.title)")
        }
    }

    private func warn(_ message: String) {
        FileHandle.standardError.write(Data("warning: \(message)\n".utf8))
    }
}

/// Times the steps of a lookup that run outside memcached, and the whole lookup.
struct Stopwatch {
    private var laps: [(label: String, duration: Duration)] = []
    private let clock = ContinuousClock()
    private let start = ContinuousClock.now

    mutating func measure<Result>(_ label: String, _ body: () throws -> Result) rethrows -> Result {
        let start = clock.now
        defer { laps.append((label, clock.now - start)) }
        return try body()
    }

    /// Time since the stopwatch was made.
    var elapsed: Duration { clock.now - start }

    /// For example "Lookup took 2.41 ms (SQLite open 1.20 ms, SQLite query 0.80 ms, memcached 0.41 ms)":
    /// the measured steps, and the rest of `total` under the name `rest`.
    func summary(total: Duration, rest: String) -> String {
        let measured = laps.reduce(Duration.zero) { $0 + $1.duration }
        let steps = (laps + [(rest, max(total - measured, .zero))])
            .map { "\($0.label) \(Self.milliseconds($0.duration))" }
            .joined(separator: ", ")
        return "Lookup took \(Self.milliseconds(total)) (\(steps))"
    }

    private static func milliseconds(_ duration: Duration) -> String {
        let (seconds, attoseconds) = duration.components
        return String(format: "%.2f ms", Double(seconds) * 1_000 + Double(attoseconds) / 1e15)
    }
}
