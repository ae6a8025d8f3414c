import Foundation
import Synchronization
import Testing
import StockadeSystem
import SystemPackage
@testable import StockadeDaemon

/// The loop that holds what the daemon watches per worker (pidfds, output
/// pipes) on one thread.
@Suite("One poll loop for every worker")
struct ReadinessLoopTests {
    /// Waits up to 5 s for `condition`.
    static func eventually(_ condition: () -> Bool) -> Bool {
        let deadline = ContinuousClock.now + .seconds(5)
        while ContinuousClock.now < deadline {
            if condition() { return true }
            usleep(2_000)
        }
        return condition()
    }

    @Test("input reaches the fd's handler, end of stream removes it, and 200 fds share the loop's one thread")
    func inputAndEnd() throws {
        let loop = ReadinessLoop(name: "test-loop")
        let seen = Mutex<[Int: [UInt8]]>([:])
        let closed = Atomic<Int>(0)
        var writers: [FileDescriptor] = []
        defer { for w in writers { try? w.close() } }
        let threadsBefore = Self.threads()
        for i in 0..<200 {
            let pipe = try PipeEnds.make()
            writers.append(pipe.write)
            let fd = pipe.read
            loop.add(fd: fd.rawValue) { _ in
                var byte: UInt8 = 0
                if read(fd.rawValue, &byte, 1) == 1 {
                    seen.withLock { $0[i, default: []].append(byte) }
                    return .keep
                }
                try? fd.close()
                closed.add(1, ordering: .relaxed)
                return .remove
            }
        }
        #expect(loop.count == 200)
        for (i, w) in writers.enumerated() {
            var byte = UInt8(i % 256)
            _ = write(w.rawValue, &byte, 1)
        }
        #expect(Self.eventually { seen.withLock { $0.count } == 200 })
        #expect(seen.withLock { s in (0..<200).allSatisfy { s[$0] == [UInt8($0 % 256)] } })
        // Other suites run beside this one: a thread per fd would add 200.
        #expect(Self.threads() - threadsBefore < 50, "threads \(threadsBefore) -> \(Self.threads())")
        for w in writers { try w.close() }
        writers = []
        #expect(Self.eventually { closed.load(ordering: .relaxed) == 200 && loop.count == 0 })
    }

    @Test("a paused fd is not handed to its handler again before its pause ends")
    func pause() throws {
        let loop = ReadinessLoop(name: "test-pause")
        let pipe = try PipeEnds.make()
        defer { try? pipe.write.close() }
        let calls = Mutex<[ContinuousClock.Instant]>([])
        let fd = pipe.read
        loop.add(fd: fd.rawValue) { _ in
            let n = calls.withLock { $0.append(.now); return $0.count }
            // The first call reads nothing and pauses: the byte stays, so
            // only the pause keeps the handler from being called at once.
            if n == 1 { return .pause(until: .now + .milliseconds(300)) }
            try? fd.close()
            return .remove
        }
        var byte: UInt8 = 7
        _ = write(pipe.write.rawValue, &byte, 1)
        #expect(Self.eventually { calls.withLock { $0.count } == 2 })
        let times = calls.withLock { $0 }
        try #require(times.count == 2)
        #expect(times[1] - times[0] >= .milliseconds(290), "\(times[1] - times[0])")
    }

    static func threads() -> Int {
        let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
        for line in status.split(separator: "\n") where line.hasPrefix("Threads:") {
            return Int(line.dropFirst(8).trimmingCharacters(in: .whitespaces)) ?? 0
        }
        return 0
    }
}
