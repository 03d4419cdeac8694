//! SQLite's math functions (`ceil`, `floor`, `trunc`, `ln`, `log`, `exp`, `pow`, `sqrt`,
//! `mod`, `pi`, the trigonometric and hyperbolic functions, `degrees`, `radians`), as SQLite
//! 3.35+ defines them when built with math functions (its CLI is; the tests build rusqlite's
//! bundled SQLite so, `.cargo/config.toml`): an argument that is not a number — NULL, a blob, a text that is not a whole
//! number — gives NULL; every result is a REAL except `ceil`/`floor`/`trunc` of an
//! integer, which return it unchanged; a result that is not a number (`sqrt(-1)`,
//! `mod(7, 0)`) is NULL; `ln`/`log` of a value ≤ 0 is NULL.

use super::value::{self, Num};
use crate::types::Value;

/// A math function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MathFunc {
    Ceil,
    Floor,
    Trunc,
    /// A function of one argument with a REAL result.
    Unary(Unary),
    Ln,
    Log10,
    Log2,
    /// `log(X)` (base 10) or `log(B, X)`.
    Log,
    Pow,
    Atan2,
    Mod,
    Pi,
}

/// The functions of one argument with a REAL result: `f64`'s own, and the inverse
/// hyperbolic ones of [`c_math`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unary {
    Exp,
    Sqrt,
    Sin,
    Cos,
    Tan,
    Asin,
    Acos,
    Atan,
    Sinh,
    Cosh,
    Tanh,
    Asinh,
    Acosh,
    Atanh,
    Degrees,
    Radians,
}

impl Unary {
    fn apply(self, x: f64) -> f64 {
        match self {
            Unary::Exp => x.exp(),
            Unary::Sqrt => x.sqrt(),
            Unary::Sin => x.sin(),
            Unary::Cos => x.cos(),
            Unary::Tan => x.tan(),
            Unary::Asin => x.asin(),
            Unary::Acos => x.acos(),
            Unary::Atan => x.atan(),
            Unary::Sinh => x.sinh(),
            Unary::Cosh => x.cosh(),
            Unary::Tanh => x.tanh(),
            Unary::Asinh => c_math::asinh(x),
            Unary::Acosh => c_math::acosh(x),
            Unary::Atanh => c_math::atanh(x),
            Unary::Degrees => x.to_degrees(),
            Unary::Radians => x.to_radians(),
        }
    }
}

/// The inverse hyperbolic functions as the C library computes them (glibc's are fdlibm's,
/// ported here line by line), which SQLite calls. Rust's own `asinh`, `acosh` and `atanh`
/// use other formulas and differ in the last bit for some arguments (`asinh(42)`); `ln`,
/// `ln_1p` and `sqrt` are the C library's in both.
mod c_math {
    const LN2: f64 = std::f64::consts::LN_2;
    /// 2^28, past which x² + 1 is x² to a double.
    const TWO_28: f64 = 268_435_456.0;
    /// 2^-28, below which the functions are x to a double.
    const TWO_M28: f64 = 1.0 / TWO_28;

    pub fn asinh(x: f64) -> f64 {
        let ax = x.abs();
        if !ax.is_finite() || ax < TWO_M28 {
            return x; // inf, NaN and tiny x come back as they are
        }
        let w = if ax > TWO_28 {
            ax.ln() + LN2
        } else if ax > 2.0 {
            (2.0 * ax + 1.0 / ((x * x + 1.0).sqrt() + ax)).ln()
        } else {
            let t = x * x;
            (ax + t / (1.0 + (1.0 + t).sqrt())).ln_1p()
        };
        w.copysign(x)
    }

    pub fn acosh(x: f64) -> f64 {
        if x.is_nan() || x < 1.0 {
            return f64::NAN;
        }
        if x >= TWO_28 {
            return if x.is_infinite() { x } else { x.ln() + LN2 };
        }
        if x == 1.0 {
            return 0.0;
        }
        if x > 2.0 {
            return (2.0 * x - 1.0 / (x + (x * x - 1.0).sqrt())).ln();
        }
        let t = x - 1.0;
        (t + (2.0 * t + t * t).sqrt()).ln_1p()
    }

    pub fn atanh(x: f64) -> f64 {
        let xa = x.abs();
        let t = if xa < 0.5 {
            if xa < TWO_M28 {
                return x;
            }
            let t = xa + xa;
            0.5 * (t + t * xa / (1.0 - xa)).ln_1p()
        } else if xa < 1.0 {
            0.5 * ((xa + xa) / (1.0 - xa)).ln_1p()
        } else if xa > 1.0 || xa.is_nan() {
            return f64::NAN;
        } else {
            return x / 0.0;
        };
        t.copysign(x)
    }
}

/// The math function `name` names, with its argument count range.
pub(crate) fn lookup(name: &str) -> Option<(MathFunc, usize, usize)> {
    use MathFunc as M;
    let unary = |u| Some((M::Unary(u), 1, 1));
    match name {
        "ceil" | "ceiling" => Some((M::Ceil, 1, 1)),
        "floor" => Some((M::Floor, 1, 1)),
        "trunc" => Some((M::Trunc, 1, 1)),
        "ln" => Some((M::Ln, 1, 1)),
        "log10" => Some((M::Log10, 1, 1)),
        "log2" => Some((M::Log2, 1, 1)),
        "log" => Some((M::Log, 1, 2)),
        "pow" | "power" => Some((M::Pow, 2, 2)),
        "atan2" => Some((M::Atan2, 2, 2)),
        "mod" => Some((M::Mod, 2, 2)),
        "pi" => Some((M::Pi, 0, 0)),
        "exp" => unary(Unary::Exp),
        "sqrt" => unary(Unary::Sqrt),
        "sin" => unary(Unary::Sin),
        "cos" => unary(Unary::Cos),
        "tan" => unary(Unary::Tan),
        "asin" => unary(Unary::Asin),
        "acos" => unary(Unary::Acos),
        "atan" => unary(Unary::Atan),
        "sinh" => unary(Unary::Sinh),
        "cosh" => unary(Unary::Cosh),
        "tanh" => unary(Unary::Tanh),
        "asinh" => unary(Unary::Asinh),
        "acosh" => unary(Unary::Acosh),
        "atanh" => unary(Unary::Atanh),
        "degrees" => unary(Unary::Degrees),
        "radians" => unary(Unary::Radians),
        _ => None,
    }
}

/// Calls `func` on evaluated arguments (arity was checked by `lookup`).
pub(crate) fn call(func: MathFunc, args: &[Value]) -> Value {
    use MathFunc as M;
    let arg = |i: usize| args.get(i).and_then(number);
    let real = |x: f64| value::num_value(Num::Real(x));
    match func {
        M::Pi => real(std::f64::consts::PI),
        M::Ceil | M::Floor | M::Trunc => match arg(0) {
            Some(Num::Int(i)) => Value::Integer(i),
            Some(Num::Real(r)) => real(match func {
                M::Ceil => r.ceil(),
                M::Floor => r.floor(),
                _ => r.trunc(),
            }),
            None => Value::Null,
        },
        M::Unary(f) => arg(0).map_or(Value::Null, |x| real(f.apply(value::num_f64(x)))),
        M::Ln | M::Log10 | M::Log2 | M::Log => {
            let Some(x) = arg(0).map(value::num_f64).filter(|x| *x > 0.0) else { return Value::Null };
            if args.len() == 2 {
                // log(B, X): the first argument is the base, which must exceed 1. SQLite
                // reads X as arithmetic does ('12abc' is 12, 'abc' and NULL are 0).
                let base = x.ln();
                let x = value::to_num(&args[1]).map_or(0.0, value::num_f64);
                return if base > 0.0 && x > 0.0 { real(x.ln() / base) } else { Value::Null };
            }
            // SQLite 3.50 calls log10 and log2 (3.40 divided the natural logarithm, so its
            // log10(1000) was 2.9999999999999996).
            real(match func {
                M::Ln => x.ln(),
                M::Log2 => x.log2(),
                _ => x.log10(),
            })
        }
        M::Pow | M::Atan2 | M::Mod => match (arg(0), arg(1)) {
            (Some(a), Some(b)) => {
                let (a, b) = (value::num_f64(a), value::num_f64(b));
                real(match func {
                    M::Pow => a.powf(b),
                    M::Atan2 => a.atan2(b),
                    _ => a % b,
                })
            }
            _ => Value::Null,
        },
    }
}

/// A value as SQLite's math functions take it (`sqlite3_value_numeric_type`): numbers as
/// they are, a text only when all of it (spaces aside) is a number, nothing else.
fn number(v: &Value) -> Option<Num> {
    match v {
        Value::Text(t) => {
            let t = t.trim_matches(|c: char| c.is_ascii_whitespace());
            // Rust's float syntax also takes "inf" and "NaN", SQLite's does not.
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b)) {
                return None;
            }
            t.parse::<i64>().map(Num::Int).ok().or_else(|| t.parse::<f64>().ok().map(Num::Real))
        }
        Value::Blob(_) => None,
        other => value::as_num(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_count_as_numbers_only_when_whole() {
        assert_eq!(number(&Value::Text(" 4 ".into())), Some(Num::Int(4)));
        assert_eq!(number(&Value::Text("2.5e1".into())), Some(Num::Real(25.0)));
        for text in ["4x", "", "inf", "NaN", "0x10", "-"] {
            assert_eq!(number(&Value::Text(text.into())), None, "{text:?}");
        }
        assert_eq!(number(&Value::Blob(b"4".to_vec())), None);
    }
}
