// swift-tools-version: 6.1
//
// Stockade: a Linux sandbox runner for untrusted model-inference workers.
// The layers, bottom to top; a target imports only targets below it, so the
// compiler checks the direction (docs/ARCHITECTURE.md):
//   CStockadeSpawn, CSeccomp, COpenSSL   C trampoline, system libraries
//   StockadeSystem                       Swift syscall wrappers
//   StockadeConfig                       TOML, ProfileError, sizes, durations
//   StockadeSeccomp, StockadeCgroups     filter compiler; cgroup backends, budgets
//   StockadeChannel                      the Noise channel (nothing of the jail)
//   StockadeJail                         Profile, spawn plan, launcher, Landlock, devices
//   StockadeDaemon                       tenants, pools, the API (a library for tests)
//   stockade, stockaded, ...             the executables

import PackageDescription

let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("InternalImportsByDefault"),
]
// The launch path (`stockade run`) links FoundationEssentials at most, never
// Foundation (its NSString bridge, CoreFoundation and ICU's data are most of
// a static image and of its start-up). A member is only visible where its
// module is imported, so a call cannot resolve to Foundation's overload
// through a dependency that imports it (TOMLKit does).
// In a release build the launch path's code reaches the metadata of a
// concrete generic type ([String], Optional<FileDescriptor>, ...) through a
// direct accessor instead of demangling the type's name at run time: the
// first use of each costs the runtime's demangler and its cache, which a
// launch pays afresh every time (about 5% of `stockade run`).
let launchPathSettings = swiftSettings + [.enableUpcomingFeature("MemberImportVisibility"),
    .unsafeFlags(["-Xfrontend", "-disable-concrete-type-metadata-mangled-name-accessors"], .when(configuration: .release))]

// The release `stockade` is one static, position-independent executable: no
// dynamic loader, no shared library to map and relocate (libstdc++,
// libseccomp); `stockade --version` takes 1.2-1.3 ms of CPU instead of 3.5,
// and `run --via`'s client is mostly this start. It stays a PIE so that the
// kernel loads the launcher's image at a random address, as every other
// binary on the host: the launcher runs as root and reads what jails write
// (a terminal's output, a supervisor's events). A static image that is not
// position-independent starts 0.5 ms sooner (it skips relocating the
// image's 45,000 pointers) but puts all of its code at one known address.
// Its relative relocations are packed (DT_RELR, glibc 2.36): 9 KB for
// the start to read instead of a 1.1 MB table of 48,000 entries.
// bfd links it (gold cannot link a static PIE); the Makefile builds with
// --disable-local-rpath, because glibc's static-PIE start asserts on an
// $ORIGIN run path, which a static image has no use for.
// FoundationEssentials' own archives are named because -static-executable
// names only the standard library's.
let launchImageLinkerSettings: [LinkerSetting] = [
    .unsafeFlags(["-static-executable", "-use-ld=bfd", "-Xclang-linker", "-static-pie", "-Xlinker", "-z", "-Xlinker", "pack-relative-relocs",
                  "-Xlinker", "--start-group", "-lFoundationEssentials", "-l_FoundationCShims", "-l_FoundationCollections",
                  "-lswiftDispatch", "-ldispatch", "-lBlocksRuntime", "-lstdc++", "-Xlinker", "--end-group"],
                 .when(configuration: .release)),
]

let package = Package(
    name: "stockade",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "stockade", targets: ["stockade"]),
        .executable(name: "stockaded", targets: ["stockaded"]),
        // A worker written in Swift links only the channel.
        .library(name: "StockadeChannel", targets: ["StockadeChannel"]),
        .library(name: "StockadeJail", targets: ["StockadeJail"]),
        // The runc-compatible OCI runtime containerd's runc shim calls.
        .executable(name: "stockade-runtime", targets: ["stockade-runtime"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
        // stockade-runtime: CDI specs written as YAML (as the NVIDIA toolkit writes them).
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.0"),
        // stockaded: the HTTP API on a unix socket, start/stop, metrics.
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
    ],
    targets: [
        // The child trampoline (clone3 .. execve) and the raw-syscall shims
        // Swift cannot call directly (variadic syscall(2), prctl, ...).
        .target(
            name: "CStockadeSpawn",
            cSettings: [.define("_GNU_SOURCE"), .unsafeFlags(["-O2", "-Wall", "-Wextra", "-Werror", "-fno-strict-aliasing"])]
        ),
        // PID 1 of every jail: a tiny static C program (reaps, forwards
        // signals, exits with the worker's status), exec'd by the trampoline
        // so that nothing of the launcher stays in the jail. Static: it runs
        // in any jail root. Found beside the stockade executables.
        // No C library (nolibc.c has its entry and its system calls): no
        // thread pointer is set, so no stack protector; no builtins, so the
        // compiler does not turn nolibc.c's memset loop into a memset call.
        .executableTarget(
            name: "stockade-init",
            cSettings: [.unsafeFlags(["-O2", "-Wall", "-Wextra", "-Werror", "-fno-stack-protector", "-fno-builtin", "-U_FORTIFY_SOURCE"])],
            // swiftc links: -static-executable makes it static, -nostartfiles
            // leaves out swiftrt.o and the C library's start files, and
            // -nostdlib the C library itself.
            linkerSettings: [.unsafeFlags(["-static-executable", "-nostartfiles", "-Xclang-linker", "-nostdlib"])]
        ),
        .systemLibrary(name: "CSeccomp", pkgConfig: "libseccomp", providers: [.apt(["libseccomp-dev"])]),
        .systemLibrary(name: "COpenSSL", pkgConfig: "openssl", providers: [.apt(["libssl-dev"])]),

        .target(
            name: "StockadeSystem",
            dependencies: [
                "CStockadeSpawn",
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: launchPathSettings
        ),
        // The layers above StockadeSystem. Each imports only the ones below
        // it, so the compiler checks the direction:
        //   StockadeConfig  <- StockadeSeccomp, StockadeCgroups <- StockadeJail
        //   StockadeChannel (beside them: a worker links only this)
        // TOML reading with line positions, the syntax check, ProfileError,
        // sizes and durations: what every profile section parses with.
        .target(
            name: "StockadeConfig",
            dependencies: [
                .product(name: "TOMLKit", package: "TOMLKit"),
            ],
            swiftSettings: launchPathSettings
        ),
        // The seccomp filter compiler, simulator, disassembler and the
        // Docker/Moby profile import.
        .target(
            name: "StockadeSeccomp",
            dependencies: ["StockadeConfig", "StockadeSystem", "CStockadeSpawn", "CSeccomp"],
            swiftSettings: launchPathSettings
        ),
        // The cgroup backends (v1, v2), budgets ([limits]) and tenants.
        .target(
            name: "StockadeCgroups",
            dependencies: [
                "StockadeConfig", "StockadeSystem", "CStockadeSpawn",
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: launchPathSettings
        ),
        // The Noise channel and its records; nothing of the jail.
        .target(
            name: "StockadeChannel",
            dependencies: [
                "StockadeSystem", "COpenSSL",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // Profile, the spawn plan, the launcher, jails, Landlock, devices.
        .target(
            name: "StockadeJail",
            dependencies: [
                "StockadeConfig", "StockadeSeccomp", "StockadeCgroups", "StockadeSystem", "CStockadeSpawn",
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: launchPathSettings
        ),
        // Tools for testers of profiles: simulate, diff, fuzz, minimize, and
        // the reference evaluation of a profile that shares no code with the
        // compiler.
        .target(
            name: "StockadeProfileTesting",
            dependencies: [
                "StockadeJail", "StockadeSeccomp", "StockadeConfig", "StockadeSystem",
                .product(name: "TOMLKit", package: "TOMLKit"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "stockade",
            dependencies: [
                "StockadeJail", "StockadeSeccomp", "StockadeCgroups", "StockadeConfig", "StockadeSystem", "StockadeProfileTesting",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: launchPathSettings,
            linkerSettings: launchImageLinkerSettings
        ),
        // The daemon: tenants, warm worker pools, the client API, audit log
        // and metrics. A library so that tests drive it in-process.
        .target(
            name: "StockadeDaemon",
            dependencies: [
                "StockadeJail", "StockadeCgroups", "StockadeConfig", "StockadeChannel", "StockadeSystem",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "stockaded",
            dependencies: [
                "StockadeDaemon", "StockadeCgroups", "StockadeConfig",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // config.json onto a jail, the container state under --root, and
        // runc's operations: what stockade-runtime runs (a library for tests).
        .target(
            name: "StockadeOCI",
            dependencies: ["StockadeJail", "StockadeCgroups", "StockadeSeccomp", "StockadeConfig", "StockadeSystem", "CStockadeSpawn",
                           .product(name: "SystemPackage", package: "swift-system"), .product(name: "Yams", package: "Yams")],
            swiftSettings: swiftSettings
        ),
        // The runc-compatible command line over StockadeOCI.
        .executableTarget(
            name: "stockade-runtime",
            dependencies: ["StockadeOCI", "StockadeConfig", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            swiftSettings: swiftSettings
        ),
        // `make bench`: spawn latency, seccomp overhead, channel throughput, daemon load.
        .executableTarget(
            name: "stockade-bench",
            dependencies: ["StockadeJail", "StockadeSeccomp", "StockadeCgroups", "StockadeChannel", "StockadeSystem", "StockadeDaemon", "StockadeOCI", "StockadeProfileTesting", .product(name: "SystemPackage", package: "swift-system"), .product(name: "Logging", package: "swift-log")],
            swiftSettings: swiftSettings
        ),
        // An example worker written in Swift: echo, reverse and sha256 over
        // the channel (the Swift counterpart of python/stockade_worker).
        .executableTarget(
            name: "stockade-swift-worker",
            dependencies: ["StockadeChannel"],
            path: "examples/swift-worker",
            swiftSettings: swiftSettings
        ),
        // The density bench's idle worker: the handshake, then echo until
        // shutdown. Static, so it needs nothing of the jail's root. The
        // channel imports Foundation, whose static archives swiftc's
        // -static-executable does not name in full: they are listed here
        // (one group, so their order does not matter).
        .executableTarget(
            name: "stockade-sleeper",
            dependencies: ["StockadeChannel"],
            swiftSettings: swiftSettings,
            linkerSettings: [.unsafeFlags(["-static-executable", "-Xlinker", "--start-group", "-lCoreFoundation", "-l_FoundationICU", "-l_FoundationCShims", "-lFoundationEssentials", "-lFoundationInternationalization", "-l_FoundationCollections", "-lFoundation", "-lswiftDispatch", "-ldispatch", "-lBlocksRuntime", "-lstdc++", "-Xlinker", "--end-group"])]
        ),
        // libFuzzer entry points. Built normally they replay a corpus; built
        // with `-sanitize=fuzzer -DFUZZING` (make fuzz) libFuzzer drives them.
        .executableTarget(
            name: "stockade-fuzz",
            dependencies: ["StockadeJail", "StockadeSeccomp", "StockadeCgroups", "StockadeChannel", "StockadeConfig"],
            path: "Fuzz/stockade-fuzz",
            swiftSettings: swiftSettings
        ),

        .testTarget(name: "ProfileTests", dependencies: ["StockadeJail", "StockadeConfig", "StockadeSeccomp", "StockadeCgroups"], swiftSettings: swiftSettings),
        .testTarget(name: "JailTests", dependencies: ["StockadeJail", "StockadeCgroups", "StockadeSystem", "CStockadeSpawn", "stockade-init"], exclude: ["Fixtures"], swiftSettings: swiftSettings),
        .testTarget(name: "SeccompTests", dependencies: ["StockadeSeccomp", "StockadeJail", "StockadeConfig", "StockadeSystem", "CSeccomp", "StockadeProfileTesting"], exclude: ["Helpers"], swiftSettings: swiftSettings),
        .testTarget(name: "DeviceTests", dependencies: ["StockadeJail", "StockadeCgroups", "StockadeConfig", "StockadeSystem"], swiftSettings: swiftSettings),
        .testTarget(name: "CgroupTests", dependencies: ["StockadeCgroups", "StockadeJail", "StockadeConfig", "StockadeSystem"], swiftSettings: swiftSettings),
        .testTarget(
            name: "ChannelTests",
            dependencies: ["StockadeChannel", "StockadeSystem", "COpenSSL", .product(name: "Logging", package: "swift-log")],
            swiftSettings: swiftSettings
        ),
        .testTarget(name: "OCITests", dependencies: ["StockadeOCI", "StockadeJail", "StockadeSystem", "stockade-runtime", "stockade-init"],
                    resources: [.copy("TestData")], swiftSettings: swiftSettings),
        .testTarget(
            name: "DaemonTests",
            dependencies: ["StockadeDaemon", "StockadeJail", "StockadeCgroups", "StockadeConfig", "StockadeChannel", "StockadeSystem", "stockade-init",
                           .product(name: "Logging", package: "swift-log")],
            exclude: ["Fixtures"],
            swiftSettings: swiftSettings
        ),
    ]
)
