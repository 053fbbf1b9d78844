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

@main
struct FilmCache: ParsableCommand {
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

    func run() throws {
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
        let memc = try MemcachedConnection(configuration: configuration)
        defer { memc.close() }

        var stopwatch = Stopwatch()

        // The cache first, as the seed does; a cache that fails is a miss, not a failed program.
        var cached: [Film]?
        if !refresh {
            do {
                cached = try stopwatch.measure("memcached get") {
                    try memc.get(Self.cacheKey, as: [Film].self)
                }
            } catch {
                warn("cannot read \(Self.cacheKey) from memcached, reading the database instead: \(error)")
            }
        }
        if let cached {
            print("Loaded data from memcached")
            printRows(cached)
            print(stopwatch.summary)
            return
        }

        // A miss: open the database only now, so a cached run never touches it.
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
        let films = try stopwatch.measure("\(databaseName) query") { try store.topFilms(limit: 5) }

        var stored = false
        do {
            stored = try stopwatch.measure("memcached set") {
                try memc.set(Self.cacheKey, films, expiration: .seconds(expiry))
            }
            if !stored {
                warn("memcached did not store \(Self.cacheKey)")
            }
        } catch {
            warn("cannot update memcached: \(error)")
        }
        if stored {
            print("Updated memcached with \(databaseName) data")
        } else {
            print("Loaded data from \(databaseName); memcached was not updated")
            printRows(films)
        }
        print(stopwatch.summary)
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

/// Times each step of a lookup and sums them up.
struct Stopwatch {
    private var laps: [(label: String, duration: Duration)] = []
    private let clock = ContinuousClock()

    mutating func measure<Result>(_ label: String, _ body: () throws -> Result) rethrows -> Result {
        let start = clock.now
        defer { laps.append((label, clock.now - start)) }
        return try body()
    }

    /// For example "Lookup took 0.41 ms (memcached get 0.41 ms)".
    var summary: String {
        let total = laps.reduce(Duration.zero) { $0 + $1.duration }
        let steps = laps.map { "\($0.label) \(Self.milliseconds($0.duration))" }.joined(separator: ", ")
        return "Lookup took \(Self.milliseconds(total)) (\(steps))"
    }

    private static func milliseconds(_ duration: Duration) -> String {
        let (seconds, attoseconds) = duration.components
        return String(format: "%.2f ms", Double(seconds) * 1_000 + Double(attoseconds) / 1e15)
    }
}
