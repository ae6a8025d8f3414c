package import StockadeConfig

/// What the daemon does when a worker calls something its profile denies.
///
/// In a profile (`[denials]`) or a daemon tenant (`[tenant.NAME]`, which
/// wins over the profile):
///
/// ```toml
/// on_denial = "kill"          # log (default), kill, quarantine
/// denials_per_minute = 20     # act only past this many in a minute (default 0: at the first)
/// ```
///
/// - `log`: every denial is counted (metrics, the workers API) and each call
///   name audited once per worker; the worker gets the profile's errno.
/// - `kill`: the worker is ended at its first denial (or the first past the
///   threshold) before the denied call returns; its request is answered
///   with the error `denied-call`.
/// - `quarantine`: as `kill`, and the tenant takes no new requests until an
///   admin resumes it (`POST /v1/tenants/NAME/resume`).
public struct DenialPolicy: Sendable, Equatable, CustomStringConvertible {
    public enum Action: String, Sendable, CaseIterable {
        case log, kill, quarantine
    }

    public var onDenial: Action = .log
    /// Denials one worker may make within a minute before the action
    /// applies; 0: the action applies at the first.
    public var perMinute: Int = 0

    public init(onDenial: Action = .log, perMinute: Int = 0) {
        self.onDenial = onDenial
        self.perMinute = perMinute
    }

    /// Reads `on_denial` and `denials_per_minute` from `table` over `base`
    /// (keys it does not hold keep `base`'s values). Errors name the file,
    /// line and key.
    package init(reading table: TableReader, over base: DenialPolicy = DenialPolicy()) throws(ProfileError) {
        self = base
        if let text = try table.string("on_denial") {
            guard let action = Action(rawValue: text) else {
                throw table.error("on_denial", "unknown policy \"\(text)\" (use log, kill or quarantine)")
            }
            onDenial = action
        }
        if let n = try table.int("denials_per_minute", in: 0...1_000_000) { perMinute = n }
    }

    public var description: String {
        onDenial == .log ? "on_denial = log"
            : "on_denial = \(onDenial.rawValue)" + (perMinute == 0 ? " at the first denial" : " past \(perMinute) denials a minute")
    }
}
