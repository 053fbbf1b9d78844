// The seed's cache-aside lookup as a web service: Hummingbird serves the top five films as JSON,
// read through memcached (the pooled client, one of the application's services) from the SQLite
// database behind it, counts visits in a session kept in memcached by the persist driver, and
// serves every metric on /metrics for Prometheus.
//
//     swift run --package-path Examples FilmService
//     curl http://127.0.0.1:8080/films/top5
//
// Environment: MEMCACHED_SERVERS (default 127.0.0.1:11211), FILMSERVICE_PORT (default 8080; 0 for
// any free port), FILMSERVICE_DATABASE (default: FilmCache's SQLite file, created on first use).

import Foundation
import Hummingbird
import HummingbirdMemcached
import Logging
import Memcached
import Metrics
import Prometheus
import Sakila

@main
struct FilmService {
    /// The seed's key and expiry.
    static let cacheKey = "top5films"
    static let cacheExpiry = MemcachedExpiration.seconds(60)
    /// How long a visitor's session lives after it starts.
    static let sessionLifetime = Duration.seconds(30 * 60)

    static func main() async throws {
        let environment = ProcessInfo.processInfo.environment
        let servers = (environment["MEMCACHED_SERVERS"].flatMap { $0.isEmpty ? nil : $0 } ?? "127.0.0.1:11211")
            .split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        let port = Int(environment["FILMSERVICE_PORT"] ?? "") ?? 8080
        let databasePath = environment["FILMSERVICE_DATABASE"] ?? SQLiteFilmStore.defaultPath

        var logger = Logger(label: "FilmService")
        logger.logLevel = .info
        // Every metric, the library's and the service's own, goes to one Prometheus registry.
        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        // memcached answers in microseconds; the default buckets start at 5 ms.
        factory.durationHistogramBuckets["memcached_command_duration_seconds"] = [
            .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2),
            .milliseconds(5), .milliseconds(25), .milliseconds(100), .seconds(1),
        ]
        MetricsSystem.bootstrap(factory)

        let films = try SQLiteFilmStore(path: databasePath)
        if films.createdTable {
            logger.info(
                "created the film table",
                metadata: ["films": "\(SampleFilms.count)", "path": "\(databasePath)"]
            )
        }
        var configuration = try MemcachedConfiguration(servers: servers)
        configuration.logger = logger
        let memcached = try MemcachedClient(configuration: configuration)
        let sessions = MemcachedPersistDriver(client: memcached, keyPrefix: "filmservice:session:")

        let router = Router()
        router.get("/films/top5") { _, context in
            try await topFilms(memcached: memcached, films: films, logger: context.logger)
        }
        router.get("/visits") { request, context in
            try await visit(request, sessions: sessions, logger: context.logger)
        }
        router.get("/metrics") { _, _ in
            Response(
                status: .ok,
                headers: [.contentType: "text/plain; version=0.0.4"],
                body: .init(byteBuffer: ByteBuffer(bytes: registry.emitToBuffer()))
            )
        }

        let app = Application(
            router: router,
            configuration: .init(address: .hostname("127.0.0.1", port: port), serverName: "FilmService"),
            // The client closes at graceful shutdown, after the server stopped taking requests.
            services: [memcached, sessions],
            onServerRunning: { channel in
                // For scripts that start the service on a free port: written at once, not
                // buffered as `print` is when standard output is a file.
                let line = "FilmService listening on 127.0.0.1:\(channel.localAddress?.port ?? port)\n"
                FileHandle.standardOutput.write(Data(line.utf8))
            },
            logger: logger
        )
        try await app.runService()
    }

    /// The lookups of the top five films, by where the answer came from.
    static let lookups = (
        memcached: Counter(label: "filmservice_top5_lookups_total", dimensions: [("source", "memcached")]),
        database: Counter(label: "filmservice_top5_lookups_total", dimensions: [("source", "database")])
    )

    /// The seed's lookup: memcached first; on a miss the database, whose rows are then cached for a
    /// minute. The response says where the films came from.
    static func topFilms(memcached: MemcachedClient, films: SQLiteFilmStore, logger: Logger) async throws -> TopFilms {
        let lookup = try await memcached.cacheAside(cacheKey, as: [Film].self, expiration: cacheExpiry) {
            try await films.topFilms(limit: 5)
        }
        // Where this request's films came from: memcached, even when another process stored
        // them while this one waited for its lock; the database when this request, or another
        // task of this process it waited for, read it.
        let fromMemcached = lookup.source == .cache || lookup.source == .loadedByAnotherProcess
        let source = fromMemcached ? "memcached" : "database"
        (fromMemcached ? lookups.memcached : lookups.database).increment()
        if let error = lookup.readError {
            logger.warning(
                "memcached could not be read; the films come from the database",
                metadata: ["error": "\(error)"]
            )
        }
        if case .failed(let error) = lookup.store {
            logger.warning("the films were not cached", metadata: ["error": "\(error)"])
        }
        return TopFilms(source: source, films: lookup.value)
    }

    /// Counts a visitor's visits in a session kept by the persist driver: the first visit creates
    /// it (and sets the cookie), later ones update it and keep its expiry.
    static func visit(
        _ request: Request,
        sessions: MemcachedPersistDriver,
        logger: Logger
    ) async throws -> EditedResponse<Visits> {
        let cookieName = "filmservice-session"
        if let id = request.cookies[cookieName]?.value,
            var visits = try await sessions.get(key: id, as: Visits.self)
        {
            visits.count += 1
            try await sessions.set(key: id, value: visits, expires: nil)
            return EditedResponse(response: visits)
        }
        let id = UUID().uuidString
        let visits = Visits(count: 1)
        try await sessions.create(key: id, value: visits, expires: sessionLifetime)
        var response = EditedResponse(response: visits)
        response.setCookie(
            Cookie(name: cookieName, value: id, maxAge: Int(sessionLifetime.components.seconds), path: "/")
        )
        return response
    }
}

/// The response of `/films/top5`.
struct TopFilms: ResponseEncodable {
    /// `database` or `memcached`.
    var source: String
    var films: [Film]
}

/// A visitor's session.
struct Visits: Codable, Sendable, ResponseEncodable {
    var count: Int
}
