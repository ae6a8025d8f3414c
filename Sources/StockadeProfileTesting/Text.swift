/// String helpers without Foundation (the `stockade` executable links none).
extension StringProtocol {
    /// Without leading and trailing spaces and tabs.
    var trimmedBlanks: String {
        let blank: (Character) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\r" }
        return String(String(drop(while: blank).reversed()).drop(while: blank).reversed())
    }

    /// Without every `c`.
    func without(_ c: Character) -> String { String(filter { $0 != c }) }

    /// As a TOML basic string, quotes included.
    var tomlQuoted: String {
        var out = "\""
        for ch in self {
            switch ch {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            default: out.append(ch)
            }
        }
        return out + "\""
    }
}
