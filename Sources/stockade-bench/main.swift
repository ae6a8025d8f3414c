// `make bench`: each part is a subcommand; `all` runs them in order.
#if canImport(Glibc)
import Glibc
#endif

let parts: [String: () throws -> Void] = [
    "spawn": spawnBench,
    "via": viaBench,
    "devices": deviceBench,
    "seccomp": seccompBench,
    "channel": channelBench,
    "cgroup": cgroupBench,
    "daemon": daemonBench,
    "broker": brokerBench,
    "fuzz": fuzzBench,
    "oci": ociBench,
    "density": densityBench,
    "template": templateBench,
]

let args = CommandLine.arguments.dropFirst()
let wanted = args.isEmpty || args.first == "all" ? parts.keys.sorted() : Array(args)
for name in wanted {
    guard let part = parts[name] else {
        print("stockade-bench: unknown part \(name); parts: \(parts.keys.sorted().joined(separator: ", "))")
        exit(2)
    }
    try part()
}
