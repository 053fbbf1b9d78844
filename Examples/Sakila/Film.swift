public import Memcached

/// One row of the seed's query, `select film_id, title from film`: what FilmCache caches.
///
/// The connection stores an array of films with its default object coder, as JSON under flag 1
/// (`[{"film_id":2,"title":"ACE GOLDFINGER"},...]`), which python-memcached reads back when it is
/// given a JSON unpickler (see `Examples/python/read_top5films.py`). The column names double as
/// the JSON keys and as the names GRDB decodes SQLite rows by.
public struct Film: Codable, Equatable, Sendable {
    /// The film's id in the `film` table.
    public var filmID: Int
    /// The film's title.
    public var title: String

    /// A film row.
    public init(filmID: Int, title: String) {
        self.filmID = filmID
        self.title = title
    }

    public enum CodingKeys: String, CodingKey {
        case filmID = "film_id"
        case title
    }
}

/// A database that holds the `film` table.
public protocol FilmStore {
    /// The top films by rental rate, highest first, ties by film id.
    ///
    /// - Parameter limit: How many films to return.
    func topFilms(limit: Int) throws -> [Film]
}

// Stored by the connection's object coder (JSON), the default coding of a `Codable` value.
extension Film: MemcachedValue {}
