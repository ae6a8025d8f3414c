// swift-tools-version: 6.1
//
// Stockade: a Linux sandbox runner for untrusted model-inference workers.
// The layers follow the design: C trampoline and system-library shims at the
// bottom, Swift syscall wrappers, the core (profiles, seccomp, cgroups, the
// launcher, the channel), and the two executables on top.

import PackageDescription

let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("InternalImportsByDefault"),
]

let package = Package(
    name: "stockade",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "stockade", targets: ["stockade"]),
        .library(name: "StockadeCore", targets: ["StockadeCore"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
    ],
    targets: [
        // The child trampoline (clone3 .. execve) and the raw-syscall shims
        // Swift cannot call directly (variadic syscall(2), prctl, ...).
        .target(
            name: "CStockadeSpawn",
            cSettings: [.define("_GNU_SOURCE"), .unsafeFlags(["-O2", "-Wall", "-Wextra", "-Werror", "-fno-strict-aliasing"])]
        ),
        .systemLibrary(name: "CSeccomp", pkgConfig: "libseccomp", providers: [.apt(["libseccomp-dev"])]),
        .systemLibrary(name: "CCap", pkgConfig: "libcap", providers: [.apt(["libcap-dev"])]),
        .systemLibrary(name: "COpenSSL", pkgConfig: "openssl", providers: [.apt(["libssl-dev"])]),

        .target(
            name: "StockadeSystem",
            dependencies: [
                "CStockadeSpawn",
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "StockadeCore",
            dependencies: [
                "StockadeSystem", "CStockadeSpawn", "CSeccomp", "CCap", "COpenSSL",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "TOMLKit", package: "TOMLKit"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "stockade",
            dependencies: [
                "StockadeCore", "StockadeSystem",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // `make bench`: spawn latency, seccomp overhead, channel throughput, daemon load.
        .executableTarget(
            name: "stockade-bench",
            dependencies: ["StockadeCore", "StockadeSystem", .product(name: "SystemPackage", package: "swift-system")],
            swiftSettings: swiftSettings
        ),
        // An example worker written in Swift: echo, reverse and sha256 over
        // the channel (the Swift counterpart of python/stockade_worker).
        .executableTarget(
            name: "stockade-swift-worker",
            dependencies: ["StockadeCore"],
            path: "examples/swift-worker",
            swiftSettings: swiftSettings
        ),
        // libFuzzer entry points. Built normally they replay a corpus; built
        // with `-sanitize=fuzzer -DFUZZING` (make fuzz) libFuzzer drives them.
        .executableTarget(
            name: "stockade-fuzz",
            dependencies: ["StockadeCore"],
            path: "Fuzz/stockade-fuzz",
            swiftSettings: swiftSettings
        ),

        .testTarget(name: "ProfileTests", dependencies: ["StockadeCore"], swiftSettings: swiftSettings),
        .testTarget(name: "JailTests", dependencies: ["StockadeCore", "StockadeSystem", "CStockadeSpawn"], exclude: ["Fixtures"], swiftSettings: swiftSettings),
        .testTarget(name: "SeccompTests", dependencies: ["StockadeCore", "StockadeSystem", "CSeccomp"], exclude: ["Helpers"], swiftSettings: swiftSettings),
        .testTarget(name: "DeviceTests", dependencies: ["StockadeCore", "StockadeSystem"], swiftSettings: swiftSettings),
        .testTarget(name: "CgroupTests", dependencies: ["StockadeCore", "StockadeSystem"], swiftSettings: swiftSettings),
        .testTarget(
            name: "ChannelTests",
            dependencies: ["StockadeCore", "StockadeSystem", "COpenSSL", .product(name: "Logging", package: "swift-log")],
            swiftSettings: swiftSettings
        ),
    ]
)
