import CMariaDB
import Foundation
import Sakila

/// The film table on a MariaDB or MySQL server, read through MariaDB Connector/C (libmariadb).
struct MariaDBFilmStore: FilmStore {
    private let connection: MariaDBConnection

    /// Connects to the server the URL names.
    ///
    /// - Throws: ``MariaDBError`` when the server cannot be reached or refuses the login.
    init(url: MySQLURL) throws {
        connection = try MariaDBConnection(url: url)
    }

    func topFilms(limit: Int) throws -> [Film] {
        try connection.query(SampleFilms.topFilmsQuery(limit: limit)).map { row in
            guard row.count == 2, let id = row[0].flatMap({ Int($0) }), let title = row[1] else {
                throw MariaDBError(code: 0, sqlState: "", message: "unexpected row \(row) from the film table")
            }
            return Film(filmID: id, title: title)
        }
    }
}

/// An error from libmariadb: its error number, SQLSTATE and message.
struct MariaDBError: Error, CustomStringConvertible {
    var code: UInt32
    var sqlState: String
    var message: String

    /// Reads the last error of a handle; libmariadb keeps it until the next call.
    init(_ handle: UnsafeMutablePointer<MYSQL>) {
        code = mysql_errno(handle)
        sqlState = String(cString: mysql_sqlstate(handle))
        message = String(cString: mysql_error(handle))
    }

    init(code: UInt32, sqlState: String, message: String) {
        self.code = code
        self.sqlState = sqlState
        self.message = message
    }

    var description: String {
        code == 0 ? "MariaDB: \(message)" : "MariaDB error \(code) (\(sqlState)): \(message)"
    }
}

/// One libmariadb connection. The class owns the `MYSQL` handle and `mysql_close`s it exactly
/// once, in `deinit`, also when connecting failed half-way.
///
/// Not thread-safe, like the handle it owns; FilmCache uses it from its main thread only.
final class MariaDBConnection {
    private let handle: UnsafeMutablePointer<MYSQL>

    /// Connects, waiting at most 5 seconds for the server.
    ///
    /// - Parameter url: Where and as whom to connect.
    /// - Throws: ``MariaDBError``.
    init(url: MySQLURL) throws {
        // mysql_init(NULL) allocates the handle; it returns NULL only when out of memory.
        guard let handle = mysql_init(nil) else {
            throw MariaDBError(code: 0, sqlState: "", message: "mysql_init failed: out of memory")
        }
        do {
            var connectTimeout: UInt32 = 5
            try Self.check(mysql_options(handle, MYSQL_OPT_CONNECT_TIMEOUT, &connectTimeout), handle)
            // utf8mb4 so that titles come back as UTF-8 whatever the server's default charset.
            try Self.check(mysql_options(handle, MYSQL_SET_CHARSET_NAME, "utf8mb4"), handle)
            // The C API reads host "localhost" (or no host) as "use the Unix socket"; a port then
            // only counts with an IP address such as 127.0.0.1.
            guard
                mysql_real_connect(
                    handle,
                    url.host,
                    url.user,
                    url.password,
                    url.database,
                    UInt32(url.port ?? 0),
                    url.socket,
                    0
                ) != nil
            else {
                throw MariaDBError(handle)
            }
        } catch {
            // A handle whose connect failed must still be closed: mysql_init allocated it.
            mysql_close(handle)
            throw error
        }
        self.handle = handle
    }

    deinit {
        mysql_close(handle)
    }

    /// Runs one statement and returns its rows as text, `nil` for SQL NULL.
    ///
    /// - Parameter sql: The statement.
    /// - Returns: The rows; empty for a statement without a result set.
    /// - Throws: ``MariaDBError``.
    func query(_ sql: String) throws -> [[String?]] {
        guard mysql_query(handle, sql) == 0 else {
            throw MariaDBError(handle)
        }
        // mysql_store_result returns NULL both for statements without a result set and on
        // failure; mysql_field_count tells which (the C API reference's advice).
        guard let result = mysql_store_result(handle) else {
            if mysql_field_count(handle) == 0 {
                return []
            }
            throw MariaDBError(handle)
        }
        defer { mysql_free_result(result) }

        let columnCount = Int(mysql_num_fields(result))
        var rows: [[String?]] = []
        // The whole result is already in client memory (store, not use), so NULL here means
        // "no more rows", never a network error.
        while let row = mysql_fetch_row(result) {
            // Lengths, not strlen: a value may contain NUL bytes.
            guard let lengths = mysql_fetch_lengths(result) else {
                throw MariaDBError(handle)
            }
            rows.append(
                (0..<columnCount).map { column in
                    row[column].map { value in
                        String(
                            decoding: UnsafeRawBufferPointer(start: value, count: Int(lengths[column])),
                            as: UTF8.self
                        )
                    }
                }
            )
        }
        return rows
    }

    private static func check(_ status: Int32, _ handle: UnsafeMutablePointer<MYSQL>) throws {
        guard status == 0 else { throw MariaDBError(handle) }
    }
}

/// A MariaDB or MySQL location written as a URL:
/// `mysql://user:password@host:port/database`, or
/// `mysql://user:password@localhost/database?socket=/path/to/mysqld.sock` for a Unix socket.
///
/// `mariadb://` works too. The user name and password may be percent-encoded; the database
/// defaults to `sakila`, the seed's.
struct MySQLURL: CustomStringConvertible {
    var host: String?
    var port: Int?
    var user: String?
    var password: String?
    var database: String
    var socket: String?

    /// Parses a URL.
    ///
    /// - Parameter text: The URL.
    /// - Throws: ``ParseError`` naming what is wrong with it.
    init(parsing text: String) throws(ParseError) {
        func invalid(_ reason: String) -> ParseError {
            ParseError(description: reason)
        }
        guard let components = URLComponents(string: text) else { throw invalid("cannot parse it") }
        guard let scheme = components.scheme?.lowercased(), ["mysql", "mariadb"].contains(scheme) else {
            throw invalid("the scheme must be mysql:// or mariadb://")
        }
        host = components.host.flatMap { $0.isEmpty ? nil : $0 }
        port = components.port
        user = components.user
        password = components.password
        let path = components.path.hasPrefix("/") ? String(components.path.dropFirst()) : components.path
        guard !path.contains("/") else { throw invalid("the path must be just a database name") }
        database = path.isEmpty ? "sakila" : path
        for item in components.queryItems ?? [] {
            guard item.name == "socket", let value = item.value, !value.isEmpty else {
                throw invalid("unknown parameter \(item.name); the only one is socket=/path/to/mysqld.sock")
            }
            socket = value
        }
    }

    /// Why a URL was refused.
    struct ParseError: Error, CustomStringConvertible {
        var description: String
    }

    /// The URL without its password, for messages.
    var description: String {
        let credentials = user.map { "\($0)@" } ?? ""
        let address = (host ?? "localhost") + (port.map { ":\($0)" } ?? "")
        return "mysql://\(credentials)\(address)/\(database)" + (socket.map { "?socket=\($0)" } ?? "")
    }
}
