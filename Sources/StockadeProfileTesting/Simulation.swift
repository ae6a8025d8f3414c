public import StockadeSeccomp
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// `stockade simulate`: the verdict of a stack of filters for each call of
/// a corpus, compared with the reference evaluation of a profile.
public struct Simulation: Sendable {
    public struct Row: Sendable {
        public var call: SeccompData
        /// The stack's return value.
        public var value: UInt32
        /// The reference's, when there is one.
        public var expected: UInt32?

        public var verdict: SeccompAction { SeccompMachine.action(value) }
        public var differs: Bool { expected.map { SeccompMachine.action($0) != verdict } ?? false }

        public var text: String {
            var s = "\(ArgumentNames.call(call)): \(verdict)"
            if let e = expected, differs { s += ", but the profile says \(SeccompMachine.action(e))" }
            return s
        }
    }

    public var filters: [[BPFInstruction]]
    public var reference: ReferencePolicy?

    /// Checks every filter and the stack as the kernel would at load time.
    public init(filters: [[BPFInstruction]], reference: ReferencePolicy?) throws(BPFError) {
        try SeccompMachine.checkStack(filters)
        self.filters = filters
        self.reference = reference
    }

    public func run(_ calls: [SeccompData]) throws(BPFError) -> [Row] {
        var rows: [Row] = []
        rows.reserveCapacity(calls.count)
        for call in calls {
            rows.append(Row(call: call, value: try SeccompMachine.run(stack: filters, on: call),
                            expected: reference?.verdict(call)))
        }
        return rows
    }

    /// The first call of `calls` where the filter and the reference part, if any.
    public func firstDifference(_ calls: [SeccompData]) throws(BPFError) -> Row? {
        guard let reference else { return nil }
        for call in calls {
            let got = try SeccompMachine.run(stack: filters, on: call)
            let want = reference.verdict(call)
            if SeccompMachine.action(got) != SeccompMachine.action(want) {
                return Row(call: call, value: got, expected: want)
            }
        }
        return nil
    }

    /// A `struct sock_filter` array from a file, as `stockade compile --raw` writes it.
    public static func readBPF(path: String) throws(BPFError) -> [BPFInstruction] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw .rejected(pc: nil, reason: "cannot read \(path)")
        }
        guard let program = BPFInstruction.decode([UInt8](data)) else {
            throw .rejected(pc: nil, reason: "\(path) is \(data.count) bytes, not a whole number of 8-byte instructions")
        }
        return program
    }
}
