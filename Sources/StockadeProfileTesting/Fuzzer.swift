public import StockadeSeccomp
import StockadeConfig
import StockadeJail

/// Delta debugging (Zeller and Hildebrandt's ddmin): the smallest subset
/// of `items` for which `test` still holds, removing chunks and then
/// complements while any removal keeps it true. `test(items)` must hold.
public enum DeltaDebugging {
    public static func minimize<T>(_ items: [T], _ test: ([T]) throws -> Bool) rethrows -> [T] {
        var current = items
        if try test([]) { return [] }
        var n = 2
        while current.count >= 2 {
            let size = (current.count + n - 1) / n
            let chunks = stride(from: 0, to: current.count, by: size).map { Array(current[$0..<min($0 + size, current.count)]) }
            var reduced = false
            for chunk in chunks where try test(chunk) {
                current = chunk; n = 2; reduced = true; break
            }
            if !reduced {
                for i in chunks.indices {
                    let complement = chunks.enumerated().filter { $0.offset != i }.flatMap(\.element)
                    if try test(complement) {
                        current = complement; n = max(n - 1, 2); reduced = true; break
                    }
                }
            }
            if !reduced {
                if n >= current.count { break }
                n = min(n * 2, current.count)
            }
        }
        return current
    }
}

/// The offline fuzzer: each mutant profile is compiled, its filter checked
/// as the kernel would at load, its verdicts on a generated corpus compared
/// with the reference evaluation, and the metamorphic rules checked:
/// the order of rules changes nothing; adding an allow never denies more;
/// what the hardening decides, it decides for every profile.
public struct ProfileFuzzer {
    public struct Failure: Error, Sendable, CustomStringConvertible {
        public var check: String
        public var sketch: SeccompSketch
        public var call: SeccompData?
        public var detail: String

        public var description: String {
            var s = "\(check): \(detail)\n"
            if let call { s += "call: \(CallCorpus.describe(call))  (corpus line: \(CallCorpus.line(call)))\n" }
            s += "profile:\n" + sketch.toml
            return s
        }
    }

    public enum Outcome: Sendable {
        case passed(calls: Int)
        /// The profile parser or libseccomp refused the mutant (a valid answer).
        case rejected(String)
        case failed(Failure)
    }

    public struct Summary: Sendable {
        public var mutants = 0
        public var rejected = 0
        public var calls = 0
        public var failures: [Failure] = []
    }

    /// A compiled mutant and its reference.
    struct Built {
        var program: [BPFInstruction]
        var reference: ReferencePolicy
    }

    static func build(_ s: SeccompSketch) -> Result<Built, Failure>? {
        let text = s.toml
        let profile: Profile
        do { profile = try Profile.parse(text: text, file: "mutant.toml") } catch { return nil }
        let program: SeccompProgram
        do { program = try profile.seccomp.compile() } catch { return nil }
        let reference: ReferencePolicy
        do { reference = try ReferencePolicy(text: text, file: "mutant.toml") } catch {
            return .failure(Failure(check: "reference", sketch: s, call: nil, detail: "the profile parsed, the reference could not read it: \(error)"))
        }
        return .success(Built(program: program.instructions, reference: reference))
    }

    static func verdict(_ p: [BPFInstruction], _ c: SeccompData) -> SeccompAction {
        SeccompMachine.action((try? runBPF(p, on: c)) ?? 0)
    }

    /// All checks on one mutant; `extraAllow` is the call the "adding an
    /// allow" rule adds.
    public static func check(_ s: SeccompSketch, extraAllow: String) -> Outcome {
        guard let built = build(s) else { return .rejected("the profile parser or the compiler refused it") }
        let b: Built
        switch built {
        case .failure(let f): return .failed(f)
        case .success(let x): b = x
        }
        do { try SeccompMachine.check(b.program) } catch {
            return .failed(Failure(check: "kernel check", sketch: s, call: nil, detail: "\(error)"))
        }
        let corpus = Boundaries.corpus(programs: [b.program], reference: b.reference)
        // 1. the filter means what the profile says.
        for c in corpus {
            let got = verdict(b.program, c), want = SeccompMachine.action(b.reference.verdict(c))
            if got != want {
                return .failed(Failure(check: "filter and profile disagree", sketch: s, call: c, detail: "the filter says \(got), the profile means \(want)"))
            }
        }
        // 2. rule order changes nothing.
        var reordered = s
        reordered.rules.reverse()
        reordered.allow.reverse()
        reordered.deny.reverse()
        if case .success(let r)? = build(reordered) {
            for c in corpus where verdict(r.program, c) != verdict(b.program, c) {
                return .failed(Failure(check: "rule order changed a verdict", sketch: s, call: c,
                                       detail: "\(verdict(b.program, c)) in the written order, \(verdict(r.program, c)) in reverse order"))
            }
        }
        // 3. adding an allow never denies more.
        var wider = s
        wider.allow = Array(Set(wider.allow + [extraAllow])).sorted()
        if case .success(let w)? = build(wider) {
            for c in corpus where verdict(b.program, c).permits && !verdict(w.program, c).permits {
                return .failed(Failure(check: "adding an allow denied a call", sketch: s, call: c,
                                       detail: "allowing \(extraAllow) turned \(verdict(b.program, c)) into \(verdict(w.program, c))"))
            }
        }
        // 4. what the hardening decides holds for every profile: the calls
        // it refuses under an allow-everything policy get the same answer.
        var open = SeccompSketch()
        open.defaultAction = "allow"
        open.base = "none"
        open.dangerous = s.dangerous
        if case .success(let o)? = build(open) {
            for c in corpus {
                let hardened = verdict(o.program, c)
                if hardened != .allow && verdict(b.program, c) != hardened {
                    return .failed(Failure(check: "the hardening did not hold", sketch: s, call: c,
                                           detail: "the hardening answers \(hardened), this profile's filter \(verdict(b.program, c))"))
                }
            }
        }
        return .passed(calls: corpus.count)
    }

    /// Shrinks a failing mutant to the fewest elements that fail the same
    /// check, and names the call it fails on.
    public static func minimize(_ f: Failure, extraAllow: String) -> Failure {
        func fails(_ s: SeccompSketch) -> Failure? {
            if case .failed(let g) = check(s, extraAllow: extraAllow), g.check == f.check { return g }
            return nil
        }
        let kept = DeltaDebugging.minimize(f.sketch.elements) { subset in
            let gone = Set(f.sketch.elements).subtracting(subset)
            return fails(f.sketch.removing(gone)) != nil
        }
        let small = f.sketch.removing(Set(f.sketch.elements).subtracting(kept))
        return fails(small) ?? f
    }

    /// `runs` mutants from `seed`: each is a few mutations of the last
    /// passing one (or of the empty sketch).
    public static func run(runs: Int, seed: UInt64, progress: (SeccompSketch, Outcome) -> Void = { _, _ in }) -> Summary {
        var mutator = ProfileMutator(seed: seed)
        var summary = Summary()
        var parent = SeccompSketch()
        for _ in 0..<runs {
            var s = parent
            for _ in 0..<(1 + Int(mutator.rng.next() % 3)) { s = mutator.mutate(s) }
            if s.rules.count > 8 { s.rules.removeFirst(s.rules.count - 8) }
            let extra = mutator.pick(ProfileMutator.calls)
            let outcome = check(s, extraAllow: extra)
            summary.mutants += 1
            switch outcome {
            case .passed(let n): summary.calls += n; parent = s
            case .rejected: summary.rejected += 1
            case .failed(let f): summary.failures.append(minimize(f, extraAllow: extra))
            }
            progress(s, outcome)
            if summary.failures.count >= 3 { break }
        }
        return summary
    }
}
