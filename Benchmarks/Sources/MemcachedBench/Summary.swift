/// The Markdown report of one run: the tables BENCHMARKS.md quotes and the targets of issue 6.
struct Summary {
    var machine: MachineNotes
    var outcomes: [Outcome]
    var sameCore: [Outcome]
    var syscalls: [SyscallCount]
    var latency: [LatencyRow] = []
    var serverView: [ServerViewRow] = []

    static let peerNames = ["pylibmc", "pymemcache", "python-memcached"]

    static func peer(_ rowName: String, is name: String) -> Bool {
        rowName == name || rowName.hasPrefix(name + ",") || rowName.hasPrefix(name + " (")
    }

    func markdown() -> String {
        var sections: [String] = []
        sections.append(
            """
            ## Run

            - \(machine.text().split(separator: "\n").joined(separator: "\n- "))
            - ratios are medians over the median of the baseline in the same run (raw C unless noted)
            """
        )
        sections.append(throughputTable())
        if let concurrency = outcomes.first(where: { $0.id == "W8" }) {
            sections.append(detailTable(concurrency, heading: "W8: concurrency (ratio to raw C with 2 threads)"))
        }
        sections.append(cpuTable())
        if !latency.isEmpty {
            sections.append(latencySection())
        }
        if !serverView.isEmpty {
            sections.append(serverViewSection())
        }
        if !sameCore.isEmpty {
            sections.append(
                sameCore.map { detailTable($0, heading: "\($0.id): \($0.title)") }.joined(separator: "\n\n")
            )
        }
        if !syscalls.isEmpty {
            sections.append(syscallTable())
        }
        sections.append(targets())
        sections.append(
            "## Every variant\n\n"
                + outcomes.filter { $0.id != "W8" }.map { detailTable($0, heading: "\($0.id): \($0.title)") }
                .joined(separator: "\n\n")
        )
        return sections.joined(separator: "\n\n") + "\n"
    }

    // MARK: - Tables

    private func cell(_ row: Row?) -> String {
        guard let row else { return "-" }
        let rate = formatRate(row.rate.median)
        guard let ratio = row.ratio else { return rate }
        return "\(rate) (\(format(ratio, decimals: 2)))"
    }

    /// Every raw C baseline of the single-task workloads, labelled for a table ("W2", or
    /// "W2 (noreply)" for the "raw C noreply" baseline), with the rows measured against it.
    private func baselineGroups() -> [(label: String, outcome: Outcome, baseline: Row, related: [Row])] {
        outcomes.filter { !$0.id.hasPrefix("W8") }.flatMap { outcome in
            outcome.rows.filter { $0.kind == .rawC && $0.baseline == nil }.map { baseline in
                let label = baseline.name == "raw C" ? outcome.id : "\(outcome.id) (\(baseline.name.dropFirst(6)))"
                return (label, outcome, baseline, outcome.rows.filter { $0.baseline == baseline.name })
            }
        }
    }

    /// One line per baseline: raw C, then ours and the peers that compare with it.
    private func throughputTable() -> String {
        var lines = [
            "## Throughput (median; ratio to the raw C cell of the same line)",
            "",
            "| workload | unit | raw C | ours sync | ours async | pylibmc | pymemcache | python-memcached |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for (label, outcome, baseline, related) in baselineGroups() {
            let peers = Self.peerNames.map { name in
                // A peer's row may carry ", binary" or " (capped at N)" after its name.
                cell(related.first { $0.kind == .peer && Self.peer($0.name, is: name) })
            }
            let fields =
                [
                    label, outcome.unit.rawValue, cell(baseline),
                    cell(related.first { $0.kind == .sync }), cell(related.first { $0.kind == .async }),
                ] + peers
            lines.append("| " + fields.joined(separator: " | ") + " |")
            // Further synchronous variants of the same workload (W4's forEachHit) get a line each.
            for extra in related.filter({ $0.kind == .sync }).dropFirst() {
                let name = extra.name.hasPrefix("ours sync, ") ? String(extra.name.dropFirst(11)) : extra.name
                let fields =
                    [label + ", " + name, outcome.unit.rawValue, "", cell(extra)] + Array(repeating: "-", count: 4)
                lines.append("| " + fields.joined(separator: " | ") + " |")
            }
        }
        return lines.joined(separator: "\n")
    }

    private func detailTable(_ outcome: Outcome, heading: String) -> String {
        var lines = [
            "### \(heading)",
            "",
            "| variant | \(outcome.unit.rawValue) median | min-max | ratio | baseline | CPU us/\(outcome.perWhat) | allocs/\(outcome.perWhat) |",
            "| --- | ---: | ---: | ---: | --- | ---: | ---: |",
        ]
        for row in outcome.rows {
            let fields = [
                row.name, formatRate(row.rate.median),
                "\(formatRate(row.rate.minimum))-\(formatRate(row.rate.maximum))",
                row.ratio.map { format($0, decimals: 3) } ?? "-", row.baseline ?? "-",
                row.cpuMicroseconds.map { format($0, decimals: 2) } ?? "-",
                row.allocations.map { format($0, decimals: 2) } ?? "-",
            ]
            lines.append("| " + fields.joined(separator: " | ") + " |")
        }
        return lines.joined(separator: "\n")
    }

    private func cpuTable() -> String {
        var lines = [
            "## Client CPU and allocations per operation (medians; whole process, user + system)",
            "",
            "| workload | per | raw C CPU us | ours sync CPU us | difference | ours async CPU us | raw C allocs | ours sync allocs | ours async allocs |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for (label, outcome, baseline, related) in baselineGroups() {
            let sync = related.first { $0.kind == .sync }
            let async = related.first { $0.kind == .async }
            let difference = zip(sync?.cpuMicroseconds, baseline.cpuMicroseconds).map { $0.0 - $0.1 }
            let fields = [
                label, outcome.perWhat, micro(baseline.cpuMicroseconds), micro(sync?.cpuMicroseconds),
                difference.map { ($0 >= 0 ? "+" : "") + format($0, decimals: 2) } ?? "-",
                micro(async?.cpuMicroseconds), micro(baseline.allocations), micro(sync?.allocations),
                micro(async?.allocations),
            ]
            lines.append("| " + fields.joined(separator: " | ") + " |")
        }
        return lines.joined(separator: "\n")
    }

    private func micro(_ value: Double?) -> String {
        value.map { format($0, decimals: 2) } ?? "-"
    }

    private func syscallTable() -> String {
        var lines = [
            "## System calls per operation (`strace -c -f`, difference of two run lengths)",
            "",
            "| workload | variant | total | calls (failed) |",
            "| --- | --- | ---: | --- |",
        ]
        for count in syscalls {
            let detail = count.perOperation.map { entry in
                let failed = entry.errors >= 0.01 ? " (\(format(entry.errors, decimals: 2)))" : ""
                return "\(entry.name) \(format(entry.calls, decimals: 2))\(failed)"
            }
            lines.append(
                "| \(count.workload) | \(count.variant) | \(format(count.total, decimals: 2)) | \(detail.joined(separator: ", ")) |"
            )
        }
        return lines.joined(separator: "\n")
    }

    // MARK: - Targets

    private func outcome(_ id: String) -> Outcome? {
        outcomes.first { $0.id == id }
    }

    func verdict(_ met: Bool) -> String {
        met ? "met" : "**missed**"
    }

    private func targets() -> String {
        var lines = ["## Targets of issue 6", ""]
        for id in ["W1", "W2", "W3", "W6"] {
            guard let outcome = outcome(id), let raw = outcome.row("raw C"), let sync = outcome.row("ours sync"),
                let ratio = sync.ratio
            else { continue }
            var text = "- \(id): ours sync \(format(ratio, decimals: 3)) of raw C (>= 0.97: \(verdict(ratio >= 0.97)))"
            if let ours = sync.cpuMicroseconds, let theirs = raw.cpuMicroseconds {
                let difference = ours - theirs
                text += "; CPU \(format(difference, decimals: 2)) us/op more (<= 1 us: \(verdict(difference <= 1)))"
            }
            let counts = syscalls.filter { $0.workload == id }
            if let rawCalls = counts.first(where: { $0.variant == "raw C" }),
                let ourCalls = counts.first(where: { $0.variant == "ours sync" })
            {
                // EAGAIN reads and the polls after them depend on timing (strace slows the
                // client), so the comparison is of the calls that move bytes.
                let same = abs(rawCalls.transfers - ourCalls.transfers) < 0.05
                let ours = format(ourCalls.transfers, decimals: 2)
                text +=
                    "; sends + reads with data \(ours) vs \(format(rawCalls.transfers, decimals: 2)) (same: \(verdict(same)))"
            }
            lines.append(text)
        }
        for (id, minimum) in [("W4", 0.95), ("W4b", 0.95), ("W7", 0.95), ("W5", 0.90)] {
            guard let outcome = outcome(id) else { continue }
            for sync in outcome.rows where sync.kind == .sync {
                guard let ratio = sync.ratio, let baseline = sync.baseline else { continue }
                lines.append(
                    "- \(id): \(sync.name) \(format(ratio, decimals: 3)) of \(baseline) (>= \(minimum): \(verdict(ratio >= minimum)))"
                )
            }
        }
        if let concurrency = outcome("W8"), let pool = concurrency.row("pool, 16 tasks"), let ratio = pool.ratio {
            lines.append(
                "- W8: pool with 16 tasks \(formatRate(pool.rate.median)) ops/s, \(format(ratio, decimals: 2)) of raw C with 2 threads (>= 1: \(verdict(ratio >= 1)))"
            )
        }
        lines.append(contentsOf: peerTargets())
        return lines.joined(separator: "\n")
    }

    /// Ahead of every peer on W4, W5, W7 and W8; not behind (within 3%) on W1, W2, W3 and W6.
    private func peerTargets() -> [String] {
        var lines: [String] = []
        let checks: [(id: String, ours: [String], ahead: Bool)] = [
            ("W1", ["ours sync"], false), ("W2", ["ours sync", "ours sync noReply"], false),
            ("W3", ["ours sync"], false), ("W6", ["ours sync"], false),
            ("W4", ["ours sync", "ours sync, forEachHit"], true),
            ("W5", ["ours sync"], true), ("W7", ["ours sync", "ours sync noReply"], true),
            ("W8", ["pool, 16 tasks"], true),
        ]
        for check in checks {
            guard let outcome = outcome(check.id) else { continue }
            let peers = outcome.rows.filter {
                $0.kind == .peer && (check.id != "W8" || $0.name.contains("16 threads"))
            }
            guard !peers.isEmpty else { continue }
            for name in check.ours {
                guard let ours = outcome.row(name) else { continue }
                let comparisons = peers.map { peer -> String in
                    let ratio = ours.rate.median / peer.rate.median
                    let met = check.ahead ? ratio > 1 : ratio >= 0.97
                    return "\(peer.name) \(format(ratio, decimals: 2))x" + (met ? "" : " (**behind**)")
                }
                let rule = check.ahead ? "ahead" : "not behind"
                lines.append("- \(check.id) peers (\(rule)): \(name) vs " + comparisons.joined(separator: ", "))
            }
        }
        return lines
    }
}

/// Both values or nothing.
private func zip(_ first: Double?, _ second: Double?) -> (Double, Double)? {
    guard let first, let second else { return nil }
    return (first, second)
}
