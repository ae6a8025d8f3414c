import StockadeConfig
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Prints a seccomp BPF program as readable pseudo-assembly: one line per
/// instruction, absolute jump targets, and comments that name what the
/// accumulator holds (`nr`, `arch`, `arg1.lo`), the system call a
/// comparison tests, and the action a return means.
///
/// ```
/// 0000  ld   [4]                      ; A = arch
/// 0001  jeq  #0xc000003e   0002 0081  ; x86_64
/// 0006  jeq  #0x1b3        0080 0007  ; clone3
/// 0081  ret  #0x80000000              ; kill-process
/// ```
public enum SeccompDisassembler {
    public static func render(_ program: [BPFInstruction], preludeCount: Int = 0) -> String {
        var lines: [String] = []
        var holds = "?"  // what A holds, as seen by a straight-line reading
        for (pc, ins) in program.enumerated() {
            if preludeCount > 0 && pc == 0 { lines.append("; hardening prelude (every jail)") }
            if preludeCount > 0 && pc == preludeCount { lines.append("; profile policy (by number; then libseccomp's filter for calls decided by their arguments)") }
            let (text, comment) = describe(ins, pc: pc, holds: &holds)
            let padded = text.padded(to: 34)
            lines.append(pcLabel(pc) + "  " + (comment.isEmpty ? text : "\(padded); \(comment)"))
        }
        return lines.joined(separator: "\n")
    }

    static func field(_ offset: UInt32) -> String {
        switch offset {
        case 0: return "nr"
        case 4: return "arch"
        case 8: return "ip.lo"
        case 12: return "ip.hi"
        case 16..<64: return "arg\((offset - 16) / 8)" + (offset % 8 == 0 ? ".lo" : ".hi")
        default: return "?"
        }
    }

    static func hex(_ k: UInt32) -> String { "#0x" + String(k, radix: 16) }

    /// An instruction index as four digits, zero-padded ("%04d").
    static func pcLabel(_ pc: Int) -> String {
        let digits = String(pc)
        return String(repeating: "0", count: max(0, 4 - digits.count)) + digits
    }

    static func describe(_ ins: BPFInstruction, pc: Int, holds: inout String) -> (String, String) {
        typealias I = BPFInstruction
        let code = ins.code
        switch ins.cls {
        case I.LD:
            switch code & 0xe0 {
            case I.ABS: holds = field(ins.k); return ("ld   [\(ins.k)]", "A = \(holds)")
            case I.IMM: holds = "?"; return ("ld   \(hex(ins.k))", "")
            case I.MEM: holds = "?"; return ("ld   M[\(ins.k)]", "")
            case I.LEN: holds = "?"; return ("ld   #len", "")
            default: return ("??   0x\(String(code, radix: 16))", "")
            }
        case I.LDX:
            return ((code & 0xe0) == I.MEM ? "ldx  M[\(ins.k)]" : "ldx  \(hex(ins.k))", "")
        case I.ST: return ("st   M[\(ins.k)]", "")
        case I.STX: return ("stx  M[\(ins.k)]", "")
        case I.ALU:
            let names: [UInt16: String] = [I.ADD: "add", I.SUB: "sub", I.MUL: "mul", I.DIV: "div", I.OR: "or",
                                           I.AND: "and", I.LSH: "lsh", I.RSH: "rsh", I.NEG: "neg", I.MOD: "mod", I.XOR: "xor"]
            let op = names[code & 0xf0] ?? "alu?"
            let src = (code & I.X) != 0 ? "x" : hex(ins.k)
            holds = op == "and" ? "\(holds) & \(src.dropFirst())" : "?"
            return ("\(op.padded(to: 4)) \(src)", "")
        case I.JMP:
            let op = code & 0xf0
            if op == I.JA {
                return ("ja   \(pcLabel(pc + 1 + Int(ins.k)))", "")
            }
            let names: [UInt16: String] = [I.JEQ: "jeq", I.JGT: "jgt", I.JGE: "jge", I.JSET: "jset"]
            let name = names[op] ?? "j?"
            let src = (code & I.X) != 0 ? "x" : hex(ins.k)
            let t = pcLabel(pc + 1 + Int(ins.jt)), f = pcLabel(pc + 1 + Int(ins.jf))
            let text = "\(name.padded(to: 4)) \(src.padded(to: 12)) \(t) \(f)"
            var comment = ""
            if holds == "nr" && op == I.JEQ {
                comment = Syscalls.name(of: Int32(bitPattern: ins.k)) ?? (ins.k == 0xffff_ffff ? "nr -1" : "nr \(ins.k)")
            } else if holds == "nr" && (op == I.JGE || op == I.JGT) {
                comment = "nr \(name == "jge" ? ">=" : ">") \(ins.k)"
            } else if holds == "nr" && op == I.JSET && ins.k == SeccompArch.x32SyscallBit {
                comment = "x32 bit"
            } else if holds == "arch" && op == I.JEQ {
                comment = ins.k == SeccompArch.x86_64 ? "x86_64" : ins.k == SeccompArch.i386 ? "i386" : "arch"
            } else if holds != "?" {
                comment = "\(holds) \(name == "jset" ? "&" : name == "jeq" ? "==" : name == "jge" ? ">=" : ">") \(src.dropFirst())"
            }
            return (text, comment)
        case I.RET:
            if (code & 0x18) == I.A { return ("ret  A", "") }
            return ("ret  \(hex(ins.k))", SeccompAction(raw: ins.k).description)
        case I.MISC:
            return ((code & 0xf8) == I.TXA ? "txa" : "tax", "")
        default:
            return ("??   0x\(String(code, radix: 16))", "")
        }
    }
}
