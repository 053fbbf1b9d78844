// The sakila-like `film` table that FilmCache reads: generated here, and only here, so SQLite and
// MariaDB hold exactly the same rows. FilmCache runs `SampleFilms.sqlScript` to create its SQLite
// database, and `FilmCache --print-sql` prints the same script for MariaDB or MySQL.

/// One row of the `film` table, every column.
struct FilmRow: Equatable {
    var filmID: Int
    var title: String
    var description: String
    var releaseYear: Int
    var languageID: Int
    var rentalDuration: Int
    /// In cents, so that the SQL literal is exact in both databases (4.99, never 4.9900000001).
    var rentalRateCents: Int
    var length: Int
    var replacementCostCents: Int
    var rating: String
    var specialFeatures: String
}

public enum SampleFilms {
    /// How many films the table holds: "a few hundred", like a small sakila.
    public static let count = 300

    /// The seed's five films (the MySQL manual's python-memcached example), with the seed's ids.
    /// They alone get the highest rental rate, so they are the top five by rental rate with or
    /// without a tie-break.
    static let seedFilms: [Int: String] = [
        2: "ACE GOLDFINGER",
        7: "AIRPLANE SIERRA",
        8: "AIRPORT POLLOCK",
        10: "ALADDIN CALENDAR",
        13: "ALI FOREVER",
    ]

    static let topRentalRateCents = 499
    static let otherRentalRatesCents = [99, 199, 299, 399]

    /// The query both databases answer, as the seed's
    /// `select film_id,title from film order by rental_rate desc limit 5`, with `film_id` as a
    /// tie-break so that the order never depends on the storage engine.
    public static func topFilmsQuery(limit: Int) -> String {
        "SELECT film_id, title FROM film ORDER BY rental_rate DESC, film_id LIMIT \(limit)"
    }

    /// Every row, the same on every machine and every run.
    static let rows: [FilmRow] = {
        var generator = SplitMix64(seed: 0x5A4B_11A0_F11C_AC4E)
        return (1...count).map { filmID in makeRow(filmID, &generator) }
    }()

    // MARK: - SQL

    static let columns = [
        "film_id", "title", "description", "release_year", "language_id", "rental_duration", "rental_rate",
        "length", "replacement_cost", "rating", "special_features",
    ]

    /// Column types that SQLite, MariaDB and MySQL all accept with the same meaning.
    static let createTable = """
        CREATE TABLE film (
            film_id INTEGER NOT NULL PRIMARY KEY,
            title VARCHAR(128) NOT NULL,
            description TEXT,
            release_year SMALLINT,
            language_id SMALLINT NOT NULL,
            rental_duration SMALLINT NOT NULL,
            rental_rate DECIMAL(4,2) NOT NULL,
            length SMALLINT,
            replacement_cost DECIMAL(5,2) NOT NULL,
            rating VARCHAR(5),
            special_features VARCHAR(100)
        );
        """

    /// The whole script: drop, create, and insert every row, 100 rows a statement.
    public static var sqlScript: String {
        var script = """
            -- The sakila-like film table of swift-libmemcached's FilmCache example (\(count) generated films).
            -- FilmCache runs this script to create its SQLite database; `FilmCache --print-sql` prints it.
            DROP TABLE IF EXISTS film;
            \(createTable)

            """
        var start = 0
        while start < rows.count {
            let batch = rows[start..<min(start + 100, rows.count)]
            script += "INSERT INTO film (\(columns.joined(separator: ", "))) VALUES\n"
            script += batch.map { "(\($0.sqlValues))" }.joined(separator: ",\n")
            script += ";\n"
            start += 100
        }
        return script
    }

    // MARK: - Generation

    private static func makeRow(_ filmID: Int, _ generator: inout SplitMix64) -> FilmRow {
        // Every row draws the same values in the same order, seed film or not, so changing a
        // seed film's title or rate never shifts the other rows.
        let adjective = generator.pick(descriptionAdjectives)
        let genre = generator.pick(genres)
        // Two different heroes: the second is drawn from the characters other than the first.
        let hero = generator.below(characters.count)
        let partner = (hero + 1 + generator.below(characters.count - 1)) % characters.count
        let description =
            "A \(adjective) \(genre) of \(withArticle(characters[hero])) and \(withArticle(characters[partner]))"
            + " who must \(generator.pick(verbs)) \(withArticle(generator.pick(characters)))"
            + " in \(generator.pick(places))"
        let releaseYear = 1995 + generator.below(30)
        let rentalDuration = 3 + generator.below(5)
        let otherRate = generator.pick(otherRentalRatesCents)
        let length = 46 + generator.below(140)
        let replacementCost = (9 + generator.below(21)) * 100 + 99
        let rating = generator.pick(["G", "PG", "PG-13", "R", "NC-17"])
        let featureMask = 1 + generator.below(15)
        let features = specialFeatures.enumerated().filter { featureMask & (1 << $0.offset) != 0 }.map(\.element)

        return FilmRow(
            filmID: filmID,
            title: seedFilms[filmID] ?? generatedTitle(filmID),
            description: description,
            releaseYear: releaseYear,
            languageID: 1,
            rentalDuration: rentalDuration,
            rentalRateCents: seedFilms[filmID] == nil ? otherRate : topRentalRateCents,
            length: length,
            replacementCostCents: replacementCost,
            rating: rating,
            specialFeatures: features.joined(separator: ",")
        )
    }

    /// A two-word title, unique per id: 263 is prime to 25 × 24 = 600, so ids 1...600 map to
    /// distinct word pairs.
    private static func generatedTitle(_ filmID: Int) -> String {
        let pair = (filmID * 263) % (titleFirstWords.count * titleSecondWords.count)
        return "\(titleFirstWords[pair / titleSecondWords.count]) \(titleSecondWords[pair % titleSecondWords.count])"
    }

    private static func withArticle(_ noun: String) -> String {
        "AEIOU".contains(noun.first!) ? "an \(noun)" : "a \(noun)"
    }

    private static let titleFirstWords = [
        "AMBER", "BLUE", "BROKEN", "CRIMSON", "DESERT", "ELECTRIC", "FALLEN", "FROZEN", "GOLDEN", "HIDDEN",
        "IRON", "JADE", "LAST", "LOST", "MIDNIGHT", "NORTHERN", "PAPER", "QUIET", "RESTLESS", "SILENT",
        "SILVER", "TIN", "VELVET", "WILD", "WINTER",
    ]
    private static let titleSecondWords = [
        "ANTHEM", "BALLAD", "BRIDGE", "CANYON", "CIRCUS", "DYNASTY", "EMPIRE", "FRONTIER", "GARDEN", "HARBOR",
        "HORIZON", "JOURNEY", "LANTERN", "MIRAGE", "ORCHARD", "PARADE", "RIVER", "SIGNAL", "SPARROW", "TEMPEST",
        "TRAIN", "VOYAGE", "WALTZ", "ZEPHYR",
    ]
    private static let descriptionAdjectives = [
        "Gripping", "Gentle", "Sprawling", "Witty", "Moody", "Breathless", "Tender", "Rowdy", "Haunting", "Sunny",
    ]
    private static let genres = [
        "Drama", "Comedy", "Western", "Thriller", "Mystery", "Musical", "Documentary", "Adventure", "Romance",
        "Fable",
    ]
    private static let characters = [
        "Lighthouse Keeper", "Chess Player", "Pilot", "Baker", "Detective", "Cartographer", "Robot", "Librarian",
        "Sailor", "Astronomer", "Clockmaker", "Beekeeper",
    ]
    private static let verbs = ["Outwit", "Rescue", "Befriend", "Chase", "Find", "Race", "Forgive", "Teach"]
    private static let places = [
        "a Desert Town", "a Lighthouse", "a Night Train", "the Mountains", "a Small Harbor", "an Old Theater",
        "a Space Station", "the Rain Forest",
    ]
    private static let specialFeatures = ["Trailers", "Commentaries", "Deleted Scenes", "Behind the Scenes"]
}

extension FilmRow {
    /// The row as a SQL `VALUES` tuple body, in ``SampleFilms/columns`` order.
    var sqlValues: String {
        [
            "\(filmID)", sqlText(title), sqlText(description), "\(releaseYear)", "\(languageID)", "\(rentalDuration)",
            sqlDecimal(rentalRateCents), "\(length)", sqlDecimal(replacementCostCents), sqlText(rating),
            sqlText(specialFeatures),
        ].joined(separator: ", ")
    }
}

/// A string literal both dialects read alike: quotes doubled, and no backslash (MariaDB and MySQL
/// treat it as an escape character by default, SQLite does not). The generated text has none.
private func sqlText(_ text: String) -> String {
    precondition(!text.contains("\\"), "sample text must not contain a backslash")
    return "'\(text.replacing("'", with: "''"))'"
}

private func sqlDecimal(_ cents: Int) -> String {
    let fraction = cents % 100
    return "\(cents / 100).\(fraction < 10 ? "0" : "")\(fraction)"
}

/// SplitMix64 (Steele, Lea and Flood, 2014): a tiny generator whose output is fixed by its seed.
///
/// The standard library's `random(in:using:)` is not promised to map generator output to the same
/// numbers in every Swift release, so the rows use only this generator's own arithmetic.
struct SplitMix64 {
    private var state: UInt64

    init(seed: UInt64) {
        state = seed
    }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A number in `0..<bound`; the modulo bias is irrelevant for sample data.
    mutating func below(_ bound: Int) -> Int {
        Int(next() % UInt64(bound))
    }

    mutating func pick<Element>(_ elements: [Element]) -> Element {
        elements[below(elements.count)]
    }
}
