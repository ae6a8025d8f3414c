/// The Stockade version, printed by `stockade --version`.
public enum Stockade {
    public static let version = "0.1.0"
}
