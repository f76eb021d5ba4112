//! Kubernetes resource quantities ("250m", "1.5", "512Mi") as numbers.

/// A quantity as a number of base units: "250m" is 0.25, "1Gi" is 1073741824.
pub fn parse(text: &str) -> Option<f64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0f64.powi(3),
        "Ti" => 1024.0f64.powi(4),
        "Pi" => 1024.0f64.powi(5),
        _ if suffix.starts_with(['e', 'E']) => 10f64.powi(suffix[1..].parse().ok()?),
        _ => return None,
    };
    Some(number * scale)
}

/// Millicores of a CPU quantity, rounded up as the scheduler counts them.
pub fn millicores(text: &str) -> Option<i64> {
    parse(text).map(|q| (q * 1000.0).ceil() as i64)
}

/// A millicore count written the way kubectl shows it ("250m", "2").
pub fn format_millicores(millis: i64) -> String {
    if millis % 1000 == 0 {
        (millis / 1000).to_string()
    } else {
        format!("{millis}m")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes() {
        assert_eq!(parse("250m"), Some(0.25));
        assert_eq!(parse("1Gi"), Some(1073741824.0));
        assert_eq!(parse("1e3"), Some(1000.0));
        assert_eq!(parse("2k"), Some(2000.0));
        assert_eq!(parse("bogus"), None);
        assert_eq!(millicores("0.1"), Some(100));
        assert_eq!(format_millicores(1500), "1500m");
        assert_eq!(format_millicores(2000), "2");
    }

    #[test]
    fn quantities() {
        // Once the simulator's own parser's test; it and the agent's limits now use this one.
        assert_eq!(parse("250m"), Some(0.25));
        assert_eq!(parse("2"), Some(2.0));
        assert_eq!(parse("1Gi"), Some(1073741824.0));
        assert_eq!(parse("1.5"), Some(1.5));
        assert_eq!(parse("x"), None);
    }

    #[test]
    fn exponents_and_peta_are_limits_too() {
        // `limits.memory: "1e9"` once ran with no limit at all: the agent's parser knew no
        // exponent, while the master accepted it.
        assert_eq!(parse("1e9"), Some(1e9));
        assert_eq!(parse("1E3"), Some(1000.0));
        assert_eq!(parse("2Pi"), Some(2.0 * 1024f64.powi(5)));
        assert_eq!(parse("1P"), Some(1e15));
        assert_eq!(parse("1e"), None);
    }
}
