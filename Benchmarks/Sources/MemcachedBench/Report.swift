/// One variant's repetitions, reduced to what the tables print.
struct Row {
    var name: String
    var kind: Variant.Kind
    var baseline: String?
    var rate: Spread
    /// Median client CPU time per operation (per `perWhat`), in microseconds.
    var cpuMicroseconds: Double?
    /// Median allocations per operation; `nil` when not counted.
    var allocations: Double?
    var ratio: Double? = nil
}

/// A workload's results: every variant's row, in the order they ran.
struct Outcome {
    var id: String
    var title: String
    var unit: RateUnit
    var perWhat: String
    var rows: [Row]

    init(_ workload: Workload, samples: [String: [Sample]]) {
        id = workload.id
        title = workload.title
        unit = workload.unit
        perWhat = workload.perWhat
        rows = workload.variants.map { variant in
            let runs = samples[variant.name] ?? []
            let allocations = runs.compactMap { sample in
                sample.allocations.map { Double($0) / workload.operations(sample) }
            }
            return Row(
                name: variant.name,
                kind: variant.kind,
                baseline: variant.baseline,
                rate: Spread(runs.map(workload.rate)),
                cpuMicroseconds: Spread(runs.map { $0.cpuSeconds * 1e6 / workload.operations($0) }).median,
                allocations: allocations.isEmpty ? nil : Spread(allocations).median
            )
        }
        computeRatios()
    }

    mutating func computeRatios() {
        let medians = Dictionary(rows.map { ($0.name, $0.rate.median) }, uniquingKeysWith: { first, _ in first })
        for index in rows.indices {
            guard let baseline = rows[index].baseline, let reference = medians[baseline], reference > 0 else {
                rows[index].ratio = nil
                continue
            }
            rows[index].ratio = rows[index].rate.median / reference
        }
    }

    func row(_ name: String) -> Row? {
        rows.first { $0.name == name }
    }

    /// The table printed as each workload finishes.
    func text() -> String {
        var lines = ["\(id) \(title)"]
        let header = [
            pad("variant", 26), pad(unit.rawValue + " median", 16, right: true), pad("min-max", 24, right: true),
            pad("ratio", 8, right: true), pad("CPU us/\(perWhat)", 14, right: true),
            pad("allocs/\(perWhat)", 14, right: true),
        ]
        lines.append("  " + header.joined(separator: " "))
        for row in rows {
            let ratio = row.ratio.map { format($0, decimals: 3) + (row.baseline == "raw C" ? "" : "*") } ?? "-"
            let fields = [
                pad(row.name, 26),
                pad(formatRate(row.rate.median), 16, right: true),
                pad("\(formatRate(row.rate.minimum))-\(formatRate(row.rate.maximum))", 24, right: true),
                pad(ratio, 8, right: true),
                pad(row.cpuMicroseconds.map { format($0, decimals: 2) } ?? "-", 14, right: true),
                pad(row.allocations.map { format($0, decimals: 2) } ?? "-", 14, right: true),
            ]
            lines.append("  " + fields.joined(separator: " "))
        }
        let otherBaselines = Set(rows.compactMap(\.baseline)).subtracting(["raw C"])
        if !otherBaselines.isEmpty {
            lines.append("  * ratio to \(otherBaselines.sorted().joined(separator: " / ")) (see the baseline column)")
        }
        return lines.joined(separator: "\n")
    }
}

// MARK: - Formatting

func format(_ value: Double, decimals: Int) -> String {
    guard value.isFinite else { return "-" }
    var scale = 1.0
    for _ in 0..<decimals { scale *= 10 }
    let rounded = (value * scale).rounded() / scale
    var text = String(rounded)
    if let dot = text.firstIndex(of: ".") {
        let existing = text.distance(from: dot, to: text.endIndex) - 1
        if decimals == 0 {
            text = String(text[..<dot])
        } else if existing < decimals {
            text += String(repeating: "0", count: decimals - existing)
        }
    } else if decimals > 0 {
        text += "." + String(repeating: "0", count: decimals)
    }
    return text
}

/// Rates with thousands separators, or one decimal when they are small (MB/s).
func formatRate(_ value: Double) -> String {
    guard value.isFinite else { return "-" }
    if value < 100 {
        return format(value, decimals: 1)
    }
    let digits = String(Int(value.rounded()))
    var grouped = ""
    for (offset, character) in digits.enumerated() {
        if offset > 0, (digits.count - offset) % 3 == 0 {
            grouped.append(",")
        }
        grouped.append(character)
    }
    return grouped
}

func pad(_ text: String, _ width: Int, right: Bool = false) -> String {
    guard text.count < width else { return text }
    let padding = String(repeating: " ", count: width - text.count)
    return right ? padding + text : text + padding
}
