import Foundation
public import GRDB

/// The embedded database: a SQLite file, created with the sample film table on first use.
public struct SQLiteFilmStore: FilmStore, Sendable {
    private let queue: DatabaseQueue

    /// Whether opening the store created the film table (first run).
    public let createdTable: Bool

    /// Opens the SQLite file at `path`, creating it and its folder when missing, and creates and
    /// fills the film table when the file has none.
    ///
    /// - Parameter path: The database file.
    /// - Throws: A GRDB `DatabaseError` or a file system error.
    public init(path: String) throws {
        try FileManager.default.createDirectory(
            at: URL(fileURLWithPath: path).deletingLastPathComponent(),
            withIntermediateDirectories: true
        )
        queue = try DatabaseQueue(path: path)
        // One write transaction: a run interrupted half-way leaves no table, so the next run
        // creates it again instead of reading a partial one.
        createdTable = try queue.write { db in
            guard try !db.tableExists("film") else { return false }
            try db.execute(sql: SampleFilms.sqlScript)
            return true
        }
    }

    public func topFilms(limit: Int) throws -> [Film] {
        try queue.read { db in
            try Film.fetchAll(db, sql: SampleFilms.topFilmsQuery(limit: limit))
        }
    }

    /// ``topFilms(limit:)`` for async code: GRDB reads on its own queue, never blocking the
    /// caller's thread (a server's cooperative threads).
    ///
    /// - Parameter limit: How many films to return.
    /// - Returns: The top films by rental rate, highest first.
    public func topFilms(limit: Int) async throws -> [Film] {
        try await queue.read { db in
            try Film.fetchAll(db, sql: SampleFilms.topFilmsQuery(limit: limit))
        }
    }

    /// Where the database lives when `--database` is not given: FilmCache's folder in the user's
    /// cache directory (`$XDG_CACHE_HOME`, else `~/.cache`), so that running from a checkout never
    /// leaves a file in the work tree, and deleting the file simply recreates it.
    public static var defaultPath: String {
        let environment = ProcessInfo.processInfo.environment
        let cacheDirectory: String
        if let xdg = environment["XDG_CACHE_HOME"], xdg.hasPrefix("/") {
            cacheDirectory = xdg
        } else if let home = environment["HOME"], !home.isEmpty {
            cacheDirectory = home + "/.cache"
        } else {
            cacheDirectory = FileManager.default.temporaryDirectory.path
        }
        return cacheDirectory + "/swift-libmemcached/FilmCache/sakila.sqlite"
    }
}

// GRDB decodes a `Decodable` record by column name, through `Film.CodingKeys`.
extension Film: FetchableRecord {}
