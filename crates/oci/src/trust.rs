//! Which publishers' precompiled code wms runs. Precompiled code is native code, so it is used
//! only from images named under a publisher the operator trusts: `--trust-precompiled` for one
//! `wms up`, or `WMS_TRUSTED_PUBLISHERS` (for the shim: in containerd's environment, never the
//! container's).

use crate::Reference;

/// Comma-separated publishers, `REGISTRY[:PORT][/PATH]` (`registry.example.com/team,127.0.0.1:5000`),
/// whose precompiled code wms uses.
pub const ENV_TRUSTED_PUBLISHERS: &str = "WMS_TRUSTED_PUBLISHERS";

/// The precompiled target name of this host (as `wms compile --target` spells it).
pub fn host_target(pulley: bool) -> &'static str {
    match (pulley, std::env::consts::ARCH) {
        (true, a) if a.ends_with("64") => "pulley64",
        (true, _) => "pulley32",
        (false, "riscv64") => "riscv64gc",
        (false, a) => a,
    }
}

/// Whether `reference`'s precompiled code may run: `flag` (`--trust-precompiled`), or a
/// publisher listed in [`ENV_TRUSTED_PUBLISHERS`] covers it.
pub fn trusted(reference: &Reference, flag: bool) -> bool {
    if flag {
        return true;
    }
    std::env::var(ENV_TRUSTED_PUBLISHERS)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .any(|p| publisher_matches(p, reference))
}

/// Whether trusted-publisher entry `pattern` (`HOST[:PORT][/PATH...]`) covers `reference`,
/// compared on whole components: the registry exactly (`host` is not `host:5001`, nor
/// `host.evil.example`), then the repository's leading path segments (`team` is not
/// `team-evil`). A tag or digest in the entry is not a publisher: such an entry matches nothing,
/// with a warning.
pub fn publisher_matches(pattern: &str, reference: &Reference) -> bool {
    let pattern = pattern.strip_prefix("oci://").unwrap_or(pattern);
    let pattern = pattern.trim_end_matches('/');
    let (registry, path) = pattern.split_once('/').unwrap_or((pattern, ""));
    if pattern.contains('@') || path.contains(':') {
        tracing::warn!(
            "{ENV_TRUSTED_PUBLISHERS} entry `{pattern}` names a tag or digest; write REGISTRY[:PORT][/REPOSITORY-PREFIX]"
        );
        return false;
    }
    let registry_ok = [reference.registry(), reference.resolve_registry()]
        .iter()
        .any(|r| r.eq_ignore_ascii_case(registry));
    if !registry_ok {
        return false;
    }
    let mut repo = reference.repository().split('/');
    path.split('/')
        .filter(|s| !s.is_empty())
        .all(|segment| repo.next() == Some(segment))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_publishers_match_whole_components() {
        let r = |s: &str| crate::parse_reference(s).unwrap();
        let hello = r("reg.example:5001/team/hello:1");
        assert!(publisher_matches("reg.example:5001", &hello));
        assert!(publisher_matches("reg.example:5001/team", &hello));
        assert!(publisher_matches("reg.example:5001/team/hello", &hello));
        assert!(publisher_matches("oci://reg.example:5001/team/", &hello));
        // A host is not the same host on another port.
        assert!(!publisher_matches("reg.example", &hello));
        assert!(!publisher_matches("reg.example:500", &hello));
        assert!(!publisher_matches("reg.example:5001/te", &hello));
        assert!(!publisher_matches("reg.example:5001/team/hello/x", &hello));
        assert!(!publisher_matches("reg.example:5001/hello", &hello));
        assert!(!publisher_matches("ho", &hello));
        assert!(!publisher_matches("reg.example:5001/team/hello:1", &hello));
        assert!(publisher_matches(
            "reg.example",
            &r("reg.example/team/hello:1")
        ));
        assert!(!publisher_matches(
            "reg.example",
            &r("reg.example.evil.example/team/hello:1")
        ));
        assert!(!publisher_matches(
            "reg.example/team",
            &r("reg.example/team-evil/hello:1")
        ));
    }
}
