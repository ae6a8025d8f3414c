import StockadeJail

/// Any bytes as a profile: parsing must end in a profile or a ProfileError
/// whose message names the file, never in a crash or a hang.
func fuzzProfile(_ bytes: [UInt8]) {
    let text = String(decoding: bytes, as: UTF8.self)
    do {
        let profile = try Profile.parse(text: text, file: "fuzz.toml")
        _ = ProfileLint.warnings(profile)
    } catch {
        precondition(error.file == "fuzz.toml")
        precondition(!error.description.isEmpty)
    }
}
