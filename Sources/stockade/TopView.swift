// What `stockade top` shows: the daemon's tenants and workers as read from
// its API (GET /v1/tenants, GET /v1/tenants/{tenant}/workers), laid out as
// text lines for a given window. Rendering is a pure function of two
// samples (this one and the one before it, for rates) and the window size.
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import StockadeConfig

/// A tenant as GET /v1/tenants shows it (the fields top uses; the rest are
/// ignored, and fields an older daemon lacks are optional).
struct TopTenant: Decodable, Sendable {
    var name: String
    var state: String
    var refusal: String?
    var workersMin: Int
    var workersMax: Int
    var starting: Int = 0
    var idle: Int = 0
    var busy: Int = 0
    var queued: Int = 0
    var queueLimit: Int = 0
    var served: Int = 0
    var failed: Int = 0
    var oomKills: Int = 0
    var usage: Usage

    struct Usage: Decodable, Sendable {
        var cpuUserSeconds: Double = 0
        var cpuSystemSeconds: Double = 0
        var throttledSeconds: Double = 0
        var memoryPeakBytes: UInt64 = 0
        var budgetMemoryMaxBytes: UInt64?
        var budgetCPUs: Double?
    }
}

/// A worker as GET /v1/tenants/{tenant}/workers shows it. `denials` (the
/// calls its profile denied) is there only on daemons that count them.
struct TopWorker: Decodable, Sendable {
    var id: String
    var state: String
    var pid: Int32
    var requests: Int = 0
    var errors: Int = 0
    var lastLatencyMs: Double?
    var meanLatencyMs: Double?
    var usage: Usage?
    var denials: Int?

    struct Usage: Decodable, Sendable {
        var memoryPeakBytes: UInt64?
        var cpuUserMicros: UInt64?
        var cpuSystemMicros: UInt64?
        var throttledMicros: UInt64?
        var oomKills: UInt64?
    }
}

/// One reading of the daemon: every tenant the token may view, with its workers.
struct TopSample: Sendable {
    var tenants: [(tenant: TopTenant, workers: [TopWorker])]
    /// When it was read (monotonic seconds): rates divide by the time between two samples.
    var takenAt: Double
}

enum TopView {
    /// The frame for `sample`; `previous` (the frame before) gives the
    /// rates, which the first frame does not have ("-"). `title` is the
    /// first line; `width` and `height` (nil: unbounded) are the window's:
    /// columns that do not fit are left out (the least telling first),
    /// then lines are cut; rows that do not fit end in a line that says
    /// how many were left out.
    static func render(_ sample: TopSample, previous: TopSample?, title: String, width: Int?, height: Int?) -> [String] {
        let dt = previous.map { sample.takenAt - $0.takenAt } ?? 0
        let prior = dt > 0 ? previous : nil
        var rows: [[String]] = []
        var workerCount = 0, busyCount = 0, queuedCount = 0
        var totalRate: Double? = prior == nil ? nil : 0
        for (t, workers) in sample.tenants {
            let before = prior?.tenants.first { $0.tenant.name == t.name }
            workerCount += workers.count
            busyCount += t.busy
            queuedCount += t.queued
            let rate = before.flatMap { b -> Double? in
                let done = (t.served + t.failed) - (b.tenant.served + b.tenant.failed)
                return done >= 0 ? Double(done) / dt : nil
            }
            if let rate, let sum = totalRate { totalRate = sum + rate } else { totalRate = nil }
            let cpu = before.flatMap { b -> Double? in
                let used = (t.usage.cpuUserSeconds + t.usage.cpuSystemSeconds) - (b.tenant.usage.cpuUserSeconds + b.tenant.usage.cpuSystemSeconds)
                return used >= 0 ? used / dt : nil
            }
            let denials = workers.compactMap(\.denials)
            rows.append([
                t.name,
                t.state,
                "\(t.idle + t.busy)\(t.starting > 0 ? "+\(t.starting)" : "") (\(t.workersMin)-\(t.workersMax))",
                "\(t.queued)/\(t.queueLimit)",
                rate.map { fixed($0, 1) } ?? "-",
                latency(workers, before: before?.workers).map { fixed($0, 1) } ?? "-",
                (cpu.map { fixed($0, 2) } ?? "-") + (t.usage.budgetCPUs.map { "/" + fixed($0, 2) } ?? ""),
                bytes(t.usage.memoryPeakBytes) + (t.usage.budgetMemoryMaxBytes.map { "/" + bytes($0) } ?? ""),
                String(t.oomKills),
                fixed(t.usage.throttledSeconds, 1) + "s",
                denials.isEmpty ? "-" : String(denials.reduce(0, +)),
            ])
            for w in workers {
                let old = before?.workers.first { $0.id == w.id }
                let wRate = old.flatMap { o -> Double? in w.requests >= o.requests ? Double(w.requests - o.requests) / dt : nil }
                let wCPU = old.flatMap { o -> Double? in
                    guard let now = cpuMicros(w), let then = cpuMicros(o), now >= then else { return nil }
                    return Double(now - then) / 1e6 / dt
                }
                rows.append([
                    "  " + w.id,
                    w.state,
                    "pid \(w.pid)",
                    "",
                    wRate.map { fixed($0, 1) } ?? "-",
                    (old.flatMap { intervalLatency([w], before: [$0]) } ?? w.meanLatencyMs).map { fixed($0, 1) } ?? "-",
                    wCPU.map { fixed($0, 2) } ?? "-",
                    w.usage?.memoryPeakBytes.map(bytes) ?? "-",
                    w.usage?.oomKills.map(String.init) ?? "-",
                    w.usage?.throttledMicros.map { fixed(Double($0) / 1e6, 1) + "s" } ?? "-",
                    w.denials.map(String.init) ?? "-",
                ])
            }
        }

        var lines = [title]
        var summary = "\(sample.tenants.count) tenant\(sample.tenants.count == 1 ? "" : "s"), \(workerCount) worker\(workerCount == 1 ? "" : "s"), "
            + "\(busyCount) busy, \(queuedCount) queued"
        if let totalRate {
            summary += ", \(fixed(totalRate, 1)) req/s"
        } else {
            summary += "; rates (REQ/S, CPU) need a second frame: - until then"
        }
        lines.append(summary)
        lines.append("")
        lines += table(rows, width: width)
        if sample.tenants.isEmpty { lines.append("(this token may view no tenant)") }

        if let width { lines = lines.map { clip($0, to: width) } }
        if let height, height > 0, lines.count > height {
            let kept = max(0, height - 1)
            let left = lines.count - kept
            lines = Array(lines.prefix(kept)) + [clip("... \(left) more line\(left == 1 ? "" : "s"): enlarge the window", to: width ?? Int.max)]
        }
        return lines
    }

    static let headers = ["TENANT/WORKER", "STATE", "WORKERS", "QUEUE", "REQ/S", "LAT MS", "CPU/BUDGET", "MEM PEAK/BUDGET", "OOM", "THROTTLED", "DENIALS"]
    /// Columns are left out in this order when the window is too narrow;
    /// the name, state and workers always stay.
    static let dropOrder = [9, 8, 3, 5, 4, 6, 7, 10]

    /// Left-aligned columns, two spaces apart, as many as fit in `width`.
    static func table(_ rows: [[String]], width: Int?) -> [String] {
        let all = [headers] + rows
        var shown = Array(headers.indices)
        func widths() -> [Int: Int] {
            var w: [Int: Int] = [:]
            for c in shown { w[c] = all.map { $0[c].count }.max() ?? 0 }
            return w
        }
        func total(_ w: [Int: Int]) -> Int { w.values.reduce(0, +) + 2 * (shown.count - 1) }
        var w = widths()
        if let width {
            for c in dropOrder where total(w) > width {
                shown.removeAll { $0 == c }
                w = widths()
            }
        }
        return all.map { row in
            var line = ""
            for (i, c) in shown.enumerated() {
                let cell = row[c]
                line += i == shown.count - 1 ? cell : cell + String(repeating: " ", count: w[c]! - cell.count + 2)
            }
            while line.hasSuffix(" ") { line.removeLast() }
            return line
        }
    }

    /// The mean latency of the requests `workers` answered since `before`
    /// (workers in both samples); the mean over their lives when there is
    /// no sample before or no request since.
    static func latency(_ workers: [TopWorker], before: [TopWorker]?) -> Double? {
        if let before, let recent = intervalLatency(workers, before: before) { return recent }
        var sum = 0.0, count = 0
        for w in workers {
            guard let mean = w.meanLatencyMs else { continue }
            sum += mean * Double(w.requests)
            count += w.requests
        }
        return count > 0 ? sum / Double(count) : nil
    }

    /// Mean latency of the requests answered between two samples, from the
    /// workers' request counts and lifetime means.
    static func intervalLatency(_ workers: [TopWorker], before: [TopWorker]) -> Double? {
        var sum = 0.0, count = 0
        for w in workers {
            guard let o = before.first(where: { $0.id == w.id }), w.requests > o.requests else { continue }
            sum += (w.meanLatencyMs ?? 0) * Double(w.requests) - (o.meanLatencyMs ?? 0) * Double(o.requests)
            count += w.requests - o.requests
        }
        return count > 0 ? max(0, sum / Double(count)) : nil
    }

    static func cpuMicros(_ w: TopWorker) -> UInt64? {
        guard let user = w.usage?.cpuUserMicros else { return nil }
        return user + (w.usage?.cpuSystemMicros ?? 0)
    }

    static func fixed(_ value: Double, _ digits: Int) -> String {
        value.fixed(digits)
    }

    /// 1536 -> "1.5K"; binary units, as the budgets in a profile are written.
    static func bytes(_ n: UInt64) -> String {
        let units = ["K", "M", "G", "T"]
        guard n >= 1024 else { return "\(n)B" }
        var value = Double(n) / 1024
        var unit = 0
        while value >= 1024, unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        return (value >= 100 || value == value.rounded() ? String(Int(value.rounded())) : fixed(value, 1)) + units[unit]
    }

    /// The first `width` characters of `line`.
    static func clip(_ line: String, to width: Int) -> String {
        line.count <= width ? line : String(line.prefix(max(0, width)))
    }
}
