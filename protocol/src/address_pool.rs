//! The addresses LoadBalancer services get, as `bramble master --load-balancer-pool` takes
//! them and the settings publish them to nodes: `FIRST-LAST` ranges or CIDRs, comma-separated.

use std::net::Ipv4Addr;

/// Inclusive ranges of addresses LoadBalancer services get.
pub type AddressPool = Vec<(Ipv4Addr, Ipv4Addr)>;

/// Reads a pool range: `A.B.C.D-E.F.G.H` or a CIDR (its usable addresses).
pub fn parse_address_range(text: &str) -> Result<(Ipv4Addr, Ipv4Addr), String> {
    let text = text.trim();
    if let Some((low, high)) = text.split_once('-') {
        let low: Ipv4Addr = low
            .trim()
            .parse()
            .map_err(|_| format!("{low:?} is not an IPv4 address"))?;
        let high: Ipv4Addr = high
            .trim()
            .parse()
            .map_err(|_| format!("{high:?} is not an IPv4 address"))?;
        if low > high {
            return Err(format!("{text}: the first address is after the last"));
        }
        return Ok((low, high));
    }
    if let Some((address, prefix)) = text.split_once('/') {
        let address: Ipv4Addr = address
            .parse()
            .map_err(|_| format!("{address:?} is not an IPv4 address"))?;
        let prefix: u32 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("{prefix:?} is not a prefix length (0 to 32)"))?;
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        };
        let network = u32::from(address) & mask;
        let broadcast = network | !mask;
        // A /31 or /32 has no network and broadcast address to leave out (RFC 3021).
        return Ok(if prefix >= 31 {
            (network.into(), broadcast.into())
        } else {
            ((network + 1).into(), (broadcast - 1).into())
        });
    }
    Err(format!(
        "expected FIRST-LAST (10.99.0.200-10.99.0.250) or a CIDR (10.99.0.192/27), got {text:?}"
    ))
}

/// Reads a pool in its text form: ranges separated by commas (empty: no pool).
pub fn parse_address_pool(text: &str) -> Result<AddressPool, String> {
    text.split(',')
        .filter(|part| !part.trim().is_empty())
        .map(parse_address_range)
        .collect()
}

/// A pool in its text form, as [`parse_address_pool`] reads it and the settings publish it.
pub fn format_address_pool(pool: &[(Ipv4Addr, Ipv4Addr)]) -> String {
    pool.iter()
        .map(|(low, high)| format!("{low}-{high}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> Ipv4Addr {
        text.parse().unwrap()
    }

    #[test]
    fn pool_ranges_parse_from_ranges_and_cidrs() {
        assert_eq!(
            parse_address_range("10.99.0.200-10.99.0.250"),
            Ok((ip("10.99.0.200"), ip("10.99.0.250")))
        );
        assert_eq!(
            parse_address_range(" 10.99.0.200 - 10.99.0.200 "),
            Ok((ip("10.99.0.200"), ip("10.99.0.200")))
        );
        assert_eq!(
            parse_address_range("10.99.0.192/27"),
            Ok((ip("10.99.0.193"), ip("10.99.0.222")))
        );
        assert_eq!(
            parse_address_range("10.99.0.200/27"),
            Ok((ip("10.99.0.193"), ip("10.99.0.222"))),
            "a host address in the CIDR names its network"
        );
        assert_eq!(
            parse_address_range("10.99.0.6/31"),
            Ok((ip("10.99.0.6"), ip("10.99.0.7")))
        );
        assert_eq!(
            parse_address_range("10.99.0.7/32"),
            Ok((ip("10.99.0.7"), ip("10.99.0.7")))
        );
        let backwards = parse_address_range("10.99.0.9-10.99.0.1").unwrap_err();
        assert!(backwards.contains("after the last"), "{backwards}");
        let neither = parse_address_range("pool").unwrap_err();
        assert!(neither.contains("FIRST-LAST"), "{neither}");
        assert!(parse_address_range("10.99.0.0/33").is_err());
        assert!(parse_address_range("10.99.0.300-10.99.0.301").is_err());
    }

    #[test]
    fn pools_read_back_what_the_settings_publish() {
        let pool = vec![
            (ip("10.99.0.200"), ip("10.99.0.249")),
            (ip("192.168.1.241"), ip("192.168.1.254")),
        ];
        let text = format_address_pool(&pool);
        assert_eq!(text, "10.99.0.200-10.99.0.249,192.168.1.241-192.168.1.254");
        assert_eq!(parse_address_pool(&text), Ok(pool));
        assert_eq!(
            parse_address_pool("10.99.0.200-10.99.0.249, 192.168.1.240/28"),
            Ok(vec![
                (ip("10.99.0.200"), ip("10.99.0.249")),
                (ip("192.168.1.241"), ip("192.168.1.254")),
            ])
        );
        assert_eq!(parse_address_pool(""), Ok(Vec::new()));
        assert!(parse_address_pool("10.99.0.200-10.99.0.249,nonsense").is_err());
    }
}
