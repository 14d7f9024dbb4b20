//! Pure checks on the three authenticating messages (PROTOCOL.md §1.2,
//! §2.4.1, §2.4.3, §2.4.5). Each takes the clock as an argument.

use std::net::Ipv4Addr;

use crate::proto::ws::{Auth, ExptTun, Vmac};
use crate::proto::Ipv4Cidr;

use super::error::CloseReason;
use super::pool::Vmac as VmacId;

/// Cacao's window, which PROTOCOL.md §1.2 asks a ringlink server to enforce.
pub const TIMESTAMP_WINDOW: i64 = 300;

pub fn now_unix() -> i64 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        // A clock before 1970 is broken; every timestamp will look stale.
        Err(_) => 0,
    }
}

pub fn check_timestamp(
    what: &'static str,
    timestamp: i64,
    now: i64,
    window: i64,
) -> Result<(), CloseReason> {
    let skew = i128::from(timestamp) - i128::from(now);
    if skew.abs() > i128::from(window) {
        let skew = i64::try_from(skew).unwrap_or(if skew < 0 { i64::MIN } else { i64::MAX });
        return Err(CloseReason::StaleTimestamp { what, skew, window });
    }
    Ok(())
}

/// The hash first, so a wrong password is reported as such whatever the
/// timestamp says.
pub fn verify_auth(m: &Auth, password: &[u8], now: i64, window: i64) -> Result<(), CloseReason> {
    if !m.verify(password) {
        return Err(CloseReason::BadHash("AUTH"));
    }
    check_timestamp("AUTH", m.timestamp, now, window)
}

pub fn verify_expttun(
    m: &ExptTun,
    password: &[u8],
    now: i64,
    window: i64,
) -> Result<(), CloseReason> {
    if !m.verify(password) {
        return Err(CloseReason::BadHash("EXPTTUN"));
    }
    check_timestamp("EXPTTUN", m.timestamp, now, window)
}

pub fn verify_vmac(m: &Vmac, password: &[u8], now: i64, window: i64) -> Result<(), CloseReason> {
    if !m.verify(password) {
        return Err(CloseReason::BadHash("VMAC"));
    }
    check_timestamp("VMAC", m.timestamp, now, window)
}

/// Candy sends sixteen zero bytes when it has no vmac; that must not count
/// as an identity, or every vmac-less client would match every other.
pub fn effective_vmac(raw: [u8; 16]) -> Option<VmacId> {
    (raw != [0u8; 16]).then_some(raw)
}

/// The address an EXPTTUN request asks for, if any. The requested prefix
/// is ignored: the reply always carries the pool's.
pub fn requested_address(cidr: Ipv4Cidr) -> Option<Ipv4Addr> {
    (!cidr.addr.is_unspecified()).then_some(cidr.addr)
}

/// The AUTH address must be a usable host of the pool (fixes §10.7).
pub fn check_vip(pool: Ipv4Cidr, ip: Ipv4Addr) -> Result<(), CloseReason> {
    if pool.is_usable_host(ip) {
        Ok(())
    } else {
        Err(CloseReason::OutsidePool { ip, pool })
    }
}

/// What an AUTH means for a session that may already be bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthStep {
    First,
    /// The same address again: harmless, nothing to do.
    Repeat,
}

/// One VIP per connection: a second AUTH for another address is refused,
/// so no session can leave a stale entry behind (§10.10).
pub fn auth_step(bound: Option<Ipv4Addr>, ip: Ipv4Addr) -> Result<AuthStep, CloseReason> {
    match bound {
        None => Ok(AuthStep::First),
        Some(old) if old == ip => Ok(AuthStep::Repeat),
        Some(old) => Err(CloseReason::SecondAuth { old, new: ip }),
    }
}

/// Printable form of a vmac for logs: Candy's are 16 hex characters.
pub fn vmac_display(v: Option<VmacId>) -> String {
    match v {
        None => "-".to_string(),
        Some(v) if v.iter().all(|b| b.is_ascii_graphic()) => {
            String::from_utf8_lossy(&v).into_owned()
        }
        Some(v) => v.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &[u8] = b"this is the password";
    const NOW: i64 = 1_700_000_000;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn auth_hash_and_window() {
        let a = Auth::new(P, ip("10.77.0.2"), NOW);
        assert_eq!(verify_auth(&a, P, NOW, TIMESTAMP_WINDOW), Ok(()));
        assert_eq!(
            verify_auth(&a, b"wrong", NOW, TIMESTAMP_WINDOW),
            Err(CloseReason::BadHash("AUTH"))
        );
        assert_eq!(verify_auth(&a, P, NOW + 300, TIMESTAMP_WINDOW), Ok(()));
        assert_eq!(verify_auth(&a, P, NOW - 300, TIMESTAMP_WINDOW), Ok(()));
        assert_eq!(
            verify_auth(&a, P, NOW + 301, TIMESTAMP_WINDOW),
            Err(CloseReason::StaleTimestamp {
                what: "AUTH",
                skew: -301,
                window: 300
            })
        );
        // Tampered ip: the hash no longer matches.
        let mut t = a;
        t.ip = ip("10.77.0.3");
        assert_eq!(
            verify_auth(&t, P, NOW, TIMESTAMP_WINDOW),
            Err(CloseReason::BadHash("AUTH"))
        );
    }

    #[test]
    fn extreme_timestamps_do_not_overflow() {
        for ts in [i64::MIN, i64::MAX] {
            assert!(check_timestamp("AUTH", ts, NOW, 300).is_err());
            assert!(check_timestamp("AUTH", NOW, ts, 300).is_err());
        }
    }

    #[test]
    fn expttun_and_vmac() {
        let e = ExptTun::new(P, ExptTun::unspecified_cidr(), NOW);
        assert_eq!(verify_expttun(&e, P, NOW, 300), Ok(()));
        assert_eq!(
            verify_expttun(&e, b"x", NOW, 300),
            Err(CloseReason::BadHash("EXPTTUN"))
        );
        assert!(verify_expttun(&e, P, NOW + 1000, 300).is_err());
        let v = Vmac::new(P, *b"0123456789abcdef", NOW);
        assert_eq!(verify_vmac(&v, P, NOW, 300), Ok(()));
        assert_eq!(
            verify_vmac(&v, b"", NOW, 300),
            Err(CloseReason::BadHash("VMAC"))
        );
        assert!(verify_vmac(&v, P, NOW - 301, 300).is_err());
    }

    #[test]
    fn vip_and_steps() {
        let pool: Ipv4Cidr = "10.77.0.0/24".parse().unwrap();
        assert_eq!(check_vip(pool, ip("10.77.0.1")), Ok(()));
        for bad in ["10.77.0.0", "10.77.0.255", "10.78.0.1", "0.0.0.0"] {
            assert!(check_vip(pool, ip(bad)).is_err(), "{bad}");
        }
        let a = ip("10.77.0.1");
        let b = ip("10.77.0.2");
        assert_eq!(auth_step(None, a), Ok(AuthStep::First));
        assert_eq!(auth_step(Some(a), a), Ok(AuthStep::Repeat));
        assert_eq!(
            auth_step(Some(a), b),
            Err(CloseReason::SecondAuth { old: a, new: b })
        );
    }

    #[test]
    fn vmacs_and_requests() {
        assert_eq!(effective_vmac([0; 16]), None);
        assert_eq!(effective_vmac([1; 16]), Some([1; 16]));
        assert_eq!(requested_address(ExptTun::unspecified_cidr()), None);
        let c: Ipv4Cidr = "10.77.0.9/16".parse().unwrap();
        assert_eq!(requested_address(c), Some(ip("10.77.0.9")));
        assert_eq!(vmac_display(None), "-");
        assert_eq!(vmac_display(Some(*b"0123456789abcdef")), "0123456789abcdef");
        assert_eq!(vmac_display(Some([1; 16])), "01".repeat(16));
    }
}
