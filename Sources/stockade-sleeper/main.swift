// stockade-sleeper: the smallest worker that speaks the channel. It answers
// the handshake, then waits for requests (each is echoed back) until the
// launcher shuts the channel down. Linked statically (Swift runtime,
// FoundationEssentials, libcrypto, glibc), so it runs in a jail root that
// holds nothing but itself, and its pages are its own: the density bench
// (`stockade-bench density`) holds a thousand of these idle in stockaded and
// measures one alone, so that what a jail costs beyond its worker is told
// apart from the worker.
import StockadeChannel
#if canImport(Glibc)
import Glibc
#endif

do {
    let channel = try WorkerChannel.accept()
    try WorkerChannel.serve(channel) { $0 }
} catch {
    let line = Array("stockade-sleeper: \(error)\n".utf8)
    _ = line.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
    exit(1)
}
