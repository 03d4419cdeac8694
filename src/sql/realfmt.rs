//! Reals as text, digit for digit as SQLite 3.50 writes them: `printf`'s `%f %e %g`
//! conversions (`sqlite3_str_vappendf`) over the digits of `sqlite3FpDecode`, and the text
//! of a REAL value (`%!.15g`), which `CAST`, `||` and every text conversion use.

/// SQLite's `SQLITE_FP_PRECISION_LIMIT`: a real's precision above it is clamped to it.
/// (Widths and other precisions are not clamped; the memory budget bounds them.)
pub(crate) const FP_PRECISION_LIMIT: usize = 100_000_000;

/// A REAL value's text, as SQLite converts it: `%!.15g` (`1.0`, `0.1`, `1.0e+16`, `Inf`).
pub(crate) fn real_text(r: f64) -> String {
    real_string(&Spec { alt2: true, precision: Some(15), ..Spec::default() }, r, b'g')
}

/// [`real`] as a `String`.
pub(crate) fn real_string(spec: &Spec, r: f64, conversion: u8) -> String {
    String::from_utf8(real(spec, r, conversion)).expect("a real's digits, sign and exponent are ASCII")
}

/// One conversion's flags, width and precision.
#[derive(Default)]
pub(crate) struct Spec {
    pub left: bool,
    /// `+` or space: the sign a non-negative number gets.
    pub sign: Option<u8>,
    pub alternate: bool,
    pub alt2: bool,
    pub zero: bool,
    pub thousands: bool,
    pub width: usize,
    pub precision: Option<usize>,
}

/// A real's significant decimal digits as `sqlite3FpDecode` gives them: `0.digits` ×
/// 10^`point`, trailing zeros removed.
struct Decoded {
    negative: bool,
    digits: Vec<u8>,
    point: i64,
}

/// `sqlite3FpDecode(r, round, max)`, ported step by step (the double-double scaling
/// included, so the digits past the 17th are SQLite's, not the exact expansion's): a
/// positive `round` keeps that many significant digits, zero or less keeps `-round` digits
/// after the decimal point; never more than `max`; rounding is half up on the digits.
fn decode(r: f64, round: i64, max: i64) -> Decoded {
    if r == 0.0 {
        return Decoded { negative: false, digits: vec![b'0'], point: 1 };
    }
    let negative = r < 0.0;
    let (v, exp) = scaled(r.abs());
    let mut digits: Vec<u8> = v.to_string().into_bytes();
    let mut point = digits.len() as i64 + exp;
    let mut round = round;
    if round <= 0 {
        round = point - round;
        if round == 0 && digits[0] >= b'5' {
            digits.insert(0, b'0');
            point += 1;
            round = 1;
        }
    }
    let n = digits.len() as i64;
    if round > 0 && (round < n || n > max) {
        let keep = round.min(max) as usize;
        let up = digits[keep] >= b'5';
        digits.truncate(keep);
        if up {
            let mut j = keep;
            loop {
                if j == 0 {
                    digits.insert(0, b'1');
                    point += 1;
                    break;
                }
                j -= 1;
                if digits[j] == b'9' {
                    digits[j] = b'0';
                } else {
                    digits[j] += 1;
                    break;
                }
            }
        }
    }
    while digits.len() > 1 && digits.last() == Some(&b'0') {
        digits.pop();
    }
    Decoded { negative, digits, point }
}

/// `r` (positive, finite) as an integer `v` and a power of ten: `r ≈ v × 10^exp` with `v`
/// in [9.2e17, 9.2e18], scaled in double-double arithmetic as SQLite scales it.
// The constants are SQLite's, digit for digit, so that the port is checkable against it.
#[allow(clippy::excessive_precision)]
fn scaled(r: f64) -> (u64, i64) {
    let mut rr = [r, 0.0];
    let mut exp = 0i64;
    if rr[0] > 9.223372036854774784e18 {
        while rr[0] > 9.223372036854774784e118 {
            exp += 100;
            dekker_mul2(&mut rr, 1.0e-100, -1.99918998026028836196e-117);
        }
        while rr[0] > 9.223372036854774784e28 {
            exp += 10;
            dekker_mul2(&mut rr, 1.0e-10, -3.6432197315497741579e-27);
        }
        while rr[0] > 9.223372036854774784e18 {
            exp += 1;
            dekker_mul2(&mut rr, 1.0e-01, -5.5511151231257827021e-18);
        }
    } else {
        while rr[0] < 9.223372036854774784e-83 {
            exp -= 100;
            dekker_mul2(&mut rr, 1.0e+100, -1.5902891109759918046e+83);
        }
        while rr[0] < 9.223372036854774784e+07 {
            exp -= 10;
            dekker_mul2(&mut rr, 1.0e+10, 0.0);
        }
        while rr[0] < 9.22337203685477478e+17 {
            exp -= 1;
            dekker_mul2(&mut rr, 1.0e+01, 0.0);
        }
    }
    // C's `(u64)` conversions truncate toward zero, as `as` does.
    let v = if rr[1] < 0.0 {
        (rr[0] as u64).wrapping_sub((-rr[1]) as u64)
    } else {
        (rr[0] as u64).wrapping_add(rr[1] as u64)
    };
    debug_assert!(v > 0, "a positive finite real scales to a positive integer");
    (v, exp)
}

/// SQLite's `dekkerMul2`: `x` (a double-double) times `y + yy` (also `sqlite3AtoF`'s).
pub(crate) fn dekker_mul2(x: &mut [f64; 2], y: f64, yy: f64) {
    const HIGH: u64 = 0xffff_ffff_fc00_0000;
    let hx = f64::from_bits(x[0].to_bits() & HIGH);
    let tx = x[0] - hx;
    let hy = f64::from_bits(y.to_bits() & HIGH);
    let ty = y - hy;
    let p = hx * hy;
    let q = hx * ty + tx * hy;
    let c = p + q;
    let cc = p - c + q + tx * ty;
    let cc = x[0] * yy + x[1] * y + cc;
    x[0] = c + cc;
    x[1] = c - x[0];
    x[1] += cc;
}

/// `%f %e %E %g %G`, following `sqlite3_str_vappendf` step by step.
pub(crate) fn real(spec: &Spec, v: f64, conversion: u8) -> Vec<u8> {
    let mut precision = spec.precision.unwrap_or(6).min(FP_PRECISION_LIMIT) as i64;
    let generic = matches!(conversion, b'g' | b'G');
    let round = match conversion {
        b'f' => -precision,
        b'g' | b'G' => {
            if precision == 0 {
                precision = 1;
            }
            precision
        }
        _ => precision + 1,
    };
    if v.is_nan() {
        return if spec.zero { b"null".to_vec() } else { b"NaN".to_vec() };
    }
    let decoded = if v.is_infinite() {
        if !spec.zero {
            return match (v < 0.0, spec.sign) {
                (true, _) => b"-Inf".to_vec(),
                (false, Some(sign)) => [sign].iter().chain(b"Inf").copied().collect(),
                (false, None) => b"Inf".to_vec(),
            };
        }
        Decoded { negative: v < 0.0, digits: vec![b'9'], point: 1000 }
    } else {
        decode(v, round, if spec.alt2 { 26 } else { 16 })
    };
    let sign = if decoded.negative { Some(b'-') } else { spec.sign };
    let exp = decoded.point - 1;
    let mut exponential = matches!(conversion, b'e' | b'E');
    let strip_zeros = if generic {
        precision -= 1;
        if exp < -4 || exp > precision {
            exponential = true;
        } else {
            precision -= exp;
        }
        !spec.alternate
    } else {
        spec.alt2
    };
    let mut e2 = if exponential { 0 } else { decoded.point - 1 };
    let decimal_point = precision > 0 || spec.alternate || spec.alt2;
    let mut out = Vec::new();
    out.extend(sign);
    let mut next_digit = {
        let digits = decoded.digits;
        let mut j = 0;
        move || {
            let d = digits.get(j).copied().unwrap_or(b'0');
            j += 1;
            d
        }
    };
    if e2 < 0 {
        out.push(b'0');
    } else {
        while e2 >= 0 {
            out.push(next_digit());
            if spec.thousands && e2 % 3 == 0 && e2 > 1 {
                out.push(b',');
            }
            e2 -= 1;
        }
    }
    if decimal_point {
        out.push(b'.');
    }
    e2 += 1;
    while e2 < 0 && precision > 0 {
        out.push(b'0');
        precision -= 1;
        e2 += 1;
    }
    while precision > 0 {
        out.push(next_digit());
        precision -= 1;
    }
    if strip_zeros && decimal_point {
        while out.last() == Some(&b'0') {
            out.pop();
        }
        if out.last() == Some(&b'.') {
            if spec.alt2 {
                out.push(b'0');
            } else {
                out.pop();
            }
        }
    }
    if exponential {
        let upper = matches!(conversion, b'E' | b'G');
        out.push(if upper { b'E' } else { b'e' });
        out.push(if exp < 0 { b'-' } else { b'+' });
        let e = exp.unsigned_abs();
        if e >= 100 {
            out.push(b'0' + (e / 100) as u8);
        }
        out.push(b'0' + (e % 100 / 10) as u8);
        out.push(b'0' + (e % 10) as u8);
    }
    if spec.zero && !spec.left && out.len() < spec.width {
        let at = usize::from(sign.is_some());
        let pad = spec.width - out.len();
        out.splice(at..at, std::iter::repeat_n(b'0', pad));
    }
    out
}
