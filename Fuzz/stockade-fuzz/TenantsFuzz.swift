import StockadeCgroups

/// Any bytes as a tenants file: parsing ends in budgets or a ProfileError
/// naming the file. Budgets that parse keep their invariants: valid names,
/// and every CPU quota and cpuset prints back to a form that parses again.
func fuzzTenants(_ bytes: [UInt8]) {
    let text = String(decoding: bytes, as: UTF8.self)
    do {
        let file = try TenantsFile.parse(text: text, file: "tenants.toml")
        for t in file.tenants {
            precondition(TenantBudget.isValidName(t.name))
            if let q = t.limits.cpu {
                precondition(CPUQuota(parsing: q.description) == q)
                precondition(q.microCPUs > 0)
            }
            if let set = t.limits.cpuset { precondition(CPUSet(parsing: set.description) == set) }
            for io in t.limits.ioMax { precondition(IOLimit(parsing: io.description) == io) }
        }
    } catch {
        precondition(error.file == "tenants.toml")
        precondition(!error.description.isEmpty)
    }
}
