//! Spin's PostgreSQL package `spin:postgres/postgres@4.2.0` (the Spin SDKs 6 and 7:
//! `spin_sdk::pg`), over the same connections, allow-list, caps and one-statement-at-a-time rule
//! as `fermyon:spin/postgres@2.0.0` ([`crate::postgres`]).
//!
//! Values cross in PostgreSQL's binary format, read and written here with `postgres-protocol`'s
//! codecs: booleans, integers, floats, text, bytea, `date`, `time`, `timestamp` and `timestamptz`
//! (both read as `datetime`, UTC for the latter), `uuid`, `json`/`jsonb`, `numeric` (as its
//! decimal text), `interval`, `int4range`/`int8range`/`numrange`, and one-dimensional arrays of
//! `int4`, `int8`, `numeric` and text. Any other column type comes back as Spin's `unsupported`
//! with its raw bytes; a parameter that does not fit its column's type is `bad-parameter`.
//! `connection-builder.set-ca-root` fails: wms connects to PostgreSQL without TLS. A query runs to
//! its end within the caps before its rows are streamed to the guest.

// The error type is the WIT's own (a `db-error` record inside), returned by value by every
// function of the interface.
#![allow(
    clippy::result_large_err,
    reason = "Spin's error type, as its WIT defines it"
)]

use std::error::Error as StdError;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use fallible_iterator::FallibleIterator as _;
use postgres_protocol::IsNull as PpNull;
use postgres_protocol::types as pp;
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};
use wasmtime::component::{Accessor, FutureReader, Resource, StreamReader};

use crate::guest::HostState;
use crate::postgres::{Connection, Failed, HasPg, PgView, RowsFailed, Shared};
use crate::wt;

mod spin4 {
    spin_sdk_7_bindgen! {
        inline: "
            package wms:spin4-postgres;
            world imports {
                import spin:postgres/postgres@4.2.0;
            }
        ",
        // The builder's constructor and `query-async` are trappable: a full resource table
        // (or stream and future table) is the host's to report, not a value of the guest's.
        imports: {
            "spin:postgres/postgres.[constructor]connection-builder": async | trappable,
            "spin:postgres/postgres.[method]connection.query-async": trappable,
            default: async,
        },
        with: {
            "spin:postgres/postgres.connection": crate::postgres::Connection,
            "spin:postgres/postgres.connection-builder": crate::postgres4::Builder,
        },
    }
}

use spin4::spin::postgres::postgres as v4;

type BoxError = Box<dyn StdError + Sync + Send>;

/// A `connection-builder`: the address, until `build`.
pub struct Builder {
    address: String,
}

/// Microseconds from 1970-01-01 to 2000-01-01, PostgreSQL's epoch.
const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;
const DAY_MICROS: i64 = 86_400_000_000;

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a count of days since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// PostgreSQL days (since 2000-01-01) of a checked date.
fn pg_days(y: i32, m: u8, d: u8) -> Result<i32, BoxError> {
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return Err(format!("{y}-{m}-{d} is not a date").into());
    }
    let days = days_from_civil(i64::from(y), u32::from(m), u32::from(d)) - 10_957;
    let (yy, mm, dd) = civil_from_days(days + 10_957);
    if (yy, mm, dd) != (i64::from(y), m, d) {
        return Err(format!("{y}-{m}-{d} is not a date").into());
    }
    Ok(i32::try_from(days)?)
}

fn time_micros(h: u8, mi: u8, s: u8, ns: u32) -> Result<i64, BoxError> {
    if h > 23 || mi > 59 || s > 59 || ns >= 1_000_000_000 {
        return Err(format!("{h}:{mi}:{s}.{ns} is not a time of day").into());
    }
    Ok(
        ((i64::from(h) * 60 + i64::from(mi)) * 60 + i64::from(s)) * 1_000_000
            + i64::from(ns / 1000),
    )
}

fn split_time(micros: i64) -> (u8, u8, u8, u32) {
    let secs = micros.div_euclid(1_000_000);
    let ns = (micros.rem_euclid(1_000_000) * 1000) as u32;
    (
        (secs / 3600) as u8,
        ((secs / 60) % 60) as u8,
        (secs % 60) as u8,
        ns,
    )
}

fn split_datetime(micros: i64) -> (i32, u8, u8, u8, u8, u8, u32) {
    let days = micros.div_euclid(DAY_MICROS);
    let (y, m, d) = civil_from_days(days + 10_957);
    let (h, mi, s, ns) = split_time(micros.rem_euclid(DAY_MICROS));
    (y as i32, m, d, h, mi, s, ns)
}

fn uuid_text(b: [u8; 16]) -> String {
    let h: String = b.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn uuid_bytes(s: &str) -> Result<[u8; 16], BoxError> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("`{s}` is not a UUID").into());
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| format!("`{s}` is not a UUID"))?;
    }
    Ok(out)
}

/// `numeric`'s binary format as decimal text.
fn numeric_text(mut buf: &[u8]) -> Result<String, BoxError> {
    let word = |b: &mut &[u8]| -> Result<u16, BoxError> {
        if b.len() < 2 {
            return Err("a truncated numeric".into());
        }
        let v = u16::from_be_bytes([b[0], b[1]]);
        *b = &b[2..];
        Ok(v)
    };
    let ndigits = word(&mut buf)? as usize;
    let weight = word(&mut buf)? as i16;
    let sign = word(&mut buf)?;
    let dscale = word(&mut buf)? as usize;
    match sign {
        0xC000 => return Ok("NaN".into()),
        0xD000 => return Ok("Infinity".into()),
        0xF000 => return Ok("-Infinity".into()),
        _ => {}
    }
    let mut digits = Vec::with_capacity(ndigits);
    for _ in 0..ndigits {
        digits.push(word(&mut buf)?);
    }
    let group = |i: i32| -> u16 {
        usize::try_from(i)
            .ok()
            .and_then(|i| digits.get(i).copied())
            .unwrap_or(0)
    };
    let mut int = String::new();
    for i in 0..=i32::from(weight) {
        let g = group(i);
        if int.is_empty() {
            if g != 0 {
                int = g.to_string();
            }
        } else {
            int.push_str(&format!("{g:04}"));
        }
    }
    if int.is_empty() {
        int.push('0');
    }
    let mut frac = String::new();
    let mut i = i32::from(weight) + 1;
    while frac.len() < dscale {
        frac.push_str(&format!("{:04}", group(i)));
        i += 1;
    }
    frac.truncate(dscale);
    let sign = if sign == 0x4000 { "-" } else { "" };
    Ok(if frac.is_empty() {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{frac}")
    })
}

/// Decimal text in `numeric`'s binary format.
fn numeric_to_sql(text: &str, out: &mut BytesMut) -> Result<(), BoxError> {
    let bad = || -> BoxError { format!("`{text}` is not a decimal number").into() };
    let t = text.trim();
    let (negative, t) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 16_383
    {
        return Err(bad());
    }
    let int = int.trim_start_matches('0');
    // Whole groups of four digits: the integer part padded on the left, the fraction on the
    // right.
    let int_pad = (4 - int.len() % 4) % 4;
    let frac_pad = (4 - frac.len() % 4) % 4;
    let all = format!("{}{int}{frac}{}", "0".repeat(int_pad), "0".repeat(frac_pad));
    let mut groups: Vec<u16> = all
        .as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).ok().and_then(|s| s.parse().ok()))
        .collect::<Option<_>>()
        .ok_or_else(bad)?;
    let mut weight = i32::try_from((int.len() + int_pad) / 4).map_err(|_| bad())? - 1;
    while groups.first() == Some(&0) {
        groups.remove(0);
        weight -= 1;
    }
    while groups.last() == Some(&0) {
        groups.pop();
    }
    if groups.is_empty() {
        weight = 0;
    }
    out.put_u16(u16::try_from(groups.len()).map_err(|_| bad())?);
    out.put_i16(i16::try_from(weight).map_err(|_| bad())?);
    out.put_u16(if negative && !groups.is_empty() {
        0x4000
    } else {
        0
    });
    out.put_u16(frac.len() as u16);
    for g in groups {
        out.put_u16(g);
    }
    Ok(())
}

/// A column's value in PostgreSQL's binary format, whatever its type.
struct Raw<'a>(&'a [u8]);

impl<'a> FromSql<'a> for Raw<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        Ok(Raw(raw))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

fn data_type(t: &Type) -> v4::DbDataType {
    use v4::DbDataType as D;
    match *t {
        Type::BOOL => D::Boolean,
        Type::CHAR => D::Int8,
        Type::INT2 => D::Int16,
        Type::INT4 => D::Int32,
        Type::INT8 => D::Int64,
        Type::FLOAT4 => D::Floating32,
        Type::FLOAT8 => D::Floating64,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => D::Str,
        Type::BYTEA => D::Binary,
        Type::DATE => D::Date,
        Type::TIME => D::Time,
        Type::TIMESTAMP | Type::TIMESTAMPTZ => D::Datetime,
        Type::UUID => D::Uuid,
        Type::JSON | Type::JSONB => D::Jsonb,
        Type::NUMERIC => D::Decimal,
        Type::INT4_RANGE => D::RangeInt32,
        Type::INT8_RANGE => D::RangeInt64,
        Type::NUM_RANGE => D::RangeDecimal,
        Type::INT4_ARRAY => D::ArrayInt32,
        Type::INT8_ARRAY => D::ArrayInt64,
        Type::NUMERIC_ARRAY => D::ArrayDecimal,
        Type::TEXT_ARRAY | Type::VARCHAR_ARRAY => D::ArrayStr,
        Type::INTERVAL => D::Interval,
        ref other => D::Other(other.name().to_string()),
    }
}

fn bound<T>(
    b: pp::RangeBound<Option<&[u8]>>,
    read: impl Fn(&[u8]) -> Result<T, BoxError>,
) -> Result<Option<(T, v4::RangeBoundKind)>, BoxError> {
    Ok(match b {
        pp::RangeBound::Inclusive(Some(v)) => Some((read(v)?, v4::RangeBoundKind::Inclusive)),
        pp::RangeBound::Exclusive(Some(v)) => Some((read(v)?, v4::RangeBoundKind::Exclusive)),
        _ => None,
    })
}

type RangeOf<T> = (
    Option<(T, v4::RangeBoundKind)>,
    Option<(T, v4::RangeBoundKind)>,
);

fn range<T>(
    raw: &[u8],
    read: impl Fn(&[u8]) -> Result<T, BoxError>,
) -> Result<RangeOf<T>, BoxError> {
    match pp::range_from_sql(raw)? {
        // Empty: no bounds at all is the closest Spin can say.
        pp::Range::Empty => Ok((None, None)),
        pp::Range::Nonempty(lo, hi) => Ok((bound(lo, &read)?, bound(hi, &read)?)),
    }
}

/// A one-dimensional array, each element read by `read` and weighed by `weigh` (its bytes once
/// decoded) as it comes: a few megabytes on the wire can be far more decoded (a 10-byte
/// `numeric` can be 128 KB of text), so the result cap is applied here, not after.
fn array<T>(
    raw: &[u8],
    read: impl Fn(&[u8]) -> Result<T, BoxError>,
    weigh: impl Fn(&T) -> usize,
) -> Result<Vec<Option<T>>, BoxError> {
    let a = pp::array_from_sql(raw)?;
    if a.dimensions().count()? > 1 {
        return Err("arrays of more than one dimension are not supported: select their elements with unnest(), or a one-dimensional slice".into());
    }
    let mut out = Vec::new();
    let mut bytes = 0usize;
    let mut values = a.values();
    while let Some(v) = values.next()? {
        let v = v.map(&read).transpose()?;
        bytes += std::mem::size_of::<Option<T>>() + v.as_ref().map_or(0, &weigh);
        if bytes > crate::postgres::MAX_RESULT_BYTES {
            return Err(format!(
                "an array of more than {} MiB once decoded: select fewer elements (unnest() with LIMIT, or a slice)",
                crate::postgres::MAX_RESULT_BYTES >> 20
            )
            .into());
        }
        out.push(v);
    }
    Ok(out)
}

/// Column `i` of `row` as Spin's `db-value`, and its size for the result cap.
fn value(row: &tokio_postgres::Row, i: usize) -> Result<(v4::DbValue, usize), String> {
    use v4::DbValue as V;
    let raw: Option<Raw> = row.try_get(i).map_err(|e| e.to_string())?;
    let Some(Raw(raw)) = raw else {
        return Ok((V::DbNull, 8));
    };
    let t = row.columns()[i].type_();
    let text = |b: &[u8]| pp::text_from_sql(b).map(str::to_string);
    let v: Result<V, BoxError> = (|| {
        Ok(match *t {
            Type::BOOL => V::Boolean(pp::bool_from_sql(raw)?),
            Type::CHAR => V::Int8(pp::char_from_sql(raw)?),
            Type::INT2 => V::Int16(pp::int2_from_sql(raw)?),
            Type::INT4 => V::Int32(pp::int4_from_sql(raw)?),
            Type::INT8 => V::Int64(pp::int8_from_sql(raw)?),
            Type::FLOAT4 => V::Floating32(pp::float4_from_sql(raw)?),
            Type::FLOAT8 => V::Floating64(pp::float8_from_sql(raw)?),
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => V::Str(text(raw)?),
            Type::BYTEA => V::Binary(raw.to_vec()),
            Type::DATE => {
                let (y, m, d) = civil_from_days(i64::from(pp::date_from_sql(raw)?) + 10_957);
                V::Date((i32::try_from(y)?, m, d))
            }
            Type::TIME => V::Time(split_time(pp::time_from_sql(raw)?)),
            Type::TIMESTAMP | Type::TIMESTAMPTZ => {
                V::Datetime(split_datetime(pp::timestamp_from_sql(raw)?))
            }
            Type::UUID => V::Uuid(uuid_text(pp::uuid_from_sql(raw)?)),
            Type::JSON => V::Jsonb(raw.to_vec()),
            Type::JSONB => match raw.split_first() {
                Some((1, json)) => V::Jsonb(json.to_vec()),
                _ => return Err("unknown jsonb version".into()),
            },
            Type::NUMERIC => V::Decimal(numeric_text(raw)?),
            Type::INTERVAL => {
                if raw.len() != 16 {
                    return Err("an interval of a wrong size".into());
                }
                let micros = i64::from_be_bytes(raw[0..8].try_into()?);
                let days = i32::from_be_bytes(raw[8..12].try_into()?);
                let months = i32::from_be_bytes(raw[12..16].try_into()?);
                V::Interval(v4::Interval {
                    micros,
                    days,
                    months,
                })
            }
            Type::INT4_RANGE => V::RangeInt32(range(raw, pp::int4_from_sql)?),
            Type::INT8_RANGE => V::RangeInt64(range(raw, pp::int8_from_sql)?),
            Type::NUM_RANGE => V::RangeDecimal(range(raw, numeric_text)?),
            Type::INT4_ARRAY => V::ArrayInt32(array(raw, pp::int4_from_sql, |_| 0)?),
            Type::INT8_ARRAY => V::ArrayInt64(array(raw, pp::int8_from_sql, |_| 0)?),
            Type::NUMERIC_ARRAY => V::ArrayDecimal(array(raw, numeric_text, String::len)?),
            Type::TEXT_ARRAY | Type::VARCHAR_ARRAY => V::ArrayStr(array(raw, text, String::len)?),
            _ => V::Unsupported(raw.to_vec()),
        })
    })();
    let v = v.map_err(|e| format!("column {:?} ({t}): {e}", row.columns()[i].name()))?;
    // What the guest gets, not what came on the wire: a 10-byte numeric can be 128 KB of text.
    let size = size(&v).max(raw.len());
    Ok((v, size))
}

/// The bytes a value takes once decoded, for the result caps: the value itself and what it
/// holds on the heap.
fn size(v: &v4::DbValue) -> usize {
    use v4::DbValue as V;
    let string = std::mem::size_of::<Option<String>>();
    let opt = |s: &Option<String>| string + s.as_ref().map_or(0, String::len);
    let bound = |b: &Option<(String, v4::RangeBoundKind)>| {
        std::mem::size_of::<Option<(String, v4::RangeBoundKind)>>()
            + b.as_ref().map_or(0, |(s, _)| s.len())
    };
    std::mem::size_of::<V>()
        + match v {
            V::Str(s) | V::Uuid(s) | V::Decimal(s) => s.len(),
            V::Binary(b) | V::Jsonb(b) | V::Unsupported(b) => b.len(),
            V::RangeDecimal((lo, hi)) => bound(lo) + bound(hi),
            V::ArrayInt32(a) => a.len() * std::mem::size_of::<Option<i32>>(),
            V::ArrayInt64(a) => a.len() * std::mem::size_of::<Option<i64>>(),
            V::ArrayDecimal(a) | V::ArrayStr(a) => a.iter().map(opt).sum::<usize>(),
            _ => 0,
        }
}

/// A guest's parameter, written in the binary format of the type the statement gives it.
#[derive(Debug)]
struct Param(v4::ParameterValue);

fn check(ok: bool, p: &v4::ParameterValue, t: &Type) -> Result<(), BoxError> {
    if ok {
        Ok(())
    } else {
        Err(format!(
            "a parameter {} cannot be a {t} value: pass the type the statement expects, or cast it in the SQL (`$1::{t}`)",
            shown(p)
        )
        .into())
    }
}

/// At most the first 80 characters of a parameter as Rust shows it: a 100 MB `bytea` in an
/// error message would be 400 MB of text.
fn shown(p: &v4::ParameterValue) -> String {
    use std::fmt::Write as _;
    struct Upto(String);
    impl std::fmt::Write for Upto {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            let room = 80usize.saturating_sub(self.0.len());
            if s.len() <= room {
                self.0.push_str(s);
                Ok(())
            } else {
                let mut end = room;
                while !s.is_char_boundary(end) {
                    end -= 1;
                }
                self.0.push_str(&s[..end]);
                self.0.push_str("...");
                Err(std::fmt::Error)
            }
        }
    }
    let mut out = Upto(String::new());
    let _ = write!(out, "{p:?}");
    out.0
}

fn bound_to_sql<T: Copy>(
    b: Option<(T, v4::RangeBoundKind)>,
    buf: &mut BytesMut,
    write: &impl Fn(T, &mut BytesMut) -> Result<(), BoxError>,
) -> Result<pp::RangeBound<PpNull>, BoxError> {
    Ok(match b {
        None => pp::RangeBound::Unbounded,
        Some((v, kind)) => {
            write(v, buf)?;
            match kind {
                v4::RangeBoundKind::Inclusive => pp::RangeBound::Inclusive(PpNull::No),
                v4::RangeBoundKind::Exclusive => pp::RangeBound::Exclusive(PpNull::No),
            }
        }
    })
}

fn range_to_sql<T: Copy>(
    (lo, hi): &RangeOf<T>,
    out: &mut BytesMut,
    write: impl Fn(T, &mut BytesMut) -> Result<(), BoxError>,
) -> Result<(), BoxError> {
    pp::range_to_sql(
        |buf| bound_to_sql(*lo, buf, &write),
        |buf| bound_to_sql(*hi, buf, &write),
        out,
    )
}

fn array_to_sql<T: Clone>(
    items: &[Option<T>],
    element: &Type,
    out: &mut BytesMut,
    write: impl Fn(T, &mut BytesMut) -> Result<(), BoxError>,
) -> Result<(), BoxError> {
    let dimension = pp::ArrayDimension {
        len: i32::try_from(items.len())?,
        lower_bound: 1,
    };
    pp::array_to_sql(
        Some(dimension),
        element.oid(),
        items.iter().cloned(),
        |item, buf| match item {
            None => Ok(PpNull::Yes),
            Some(v) => {
                write(v, buf)?;
                Ok(PpNull::No)
            }
        },
        out,
    )
}

impl ToSql for Param {
    fn to_sql(&self, t: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        use v4::ParameterValue as P;
        let p = &self.0;
        match p {
            P::DbNull => return Ok(IsNull::Yes),
            P::Boolean(v) => {
                check(*t == Type::BOOL, p, t)?;
                pp::bool_to_sql(*v, out);
            }
            P::Int8(v) => match *t {
                Type::CHAR => pp::char_to_sql(*v, out),
                Type::INT2 => pp::int2_to_sql(i16::from(*v), out),
                Type::INT4 => pp::int4_to_sql(i32::from(*v), out),
                Type::INT8 => pp::int8_to_sql(i64::from(*v), out),
                _ => check(false, p, t)?,
            },
            P::Int16(v) => match *t {
                Type::INT2 => pp::int2_to_sql(*v, out),
                Type::INT4 => pp::int4_to_sql(i32::from(*v), out),
                Type::INT8 => pp::int8_to_sql(i64::from(*v), out),
                _ => check(false, p, t)?,
            },
            P::Int32(v) => match *t {
                Type::INT4 => pp::int4_to_sql(*v, out),
                Type::INT8 => pp::int8_to_sql(i64::from(*v), out),
                _ => check(false, p, t)?,
            },
            P::Int64(v) => {
                check(*t == Type::INT8, p, t)?;
                pp::int8_to_sql(*v, out);
            }
            P::Floating32(v) => match *t {
                Type::FLOAT4 => pp::float4_to_sql(*v, out),
                Type::FLOAT8 => pp::float8_to_sql(f64::from(*v), out),
                _ => check(false, p, t)?,
            },
            P::Floating64(v) => {
                check(*t == Type::FLOAT8, p, t)?;
                pp::float8_to_sql(*v, out);
            }
            P::Str(v) => {
                check(
                    matches!(
                        *t,
                        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN
                    ),
                    p,
                    t,
                )?;
                pp::text_to_sql(v, out);
            }
            P::Binary(v) => {
                check(*t == Type::BYTEA, p, t)?;
                pp::bytea_to_sql(v, out);
            }
            P::Date((y, m, d)) => {
                check(*t == Type::DATE, p, t)?;
                pp::date_to_sql(pg_days(*y, *m, *d)?, out);
            }
            P::Time((h, mi, s, ns)) => {
                check(*t == Type::TIME, p, t)?;
                pp::time_to_sql(time_micros(*h, *mi, *s, *ns)?, out);
            }
            P::Datetime((y, mo, d, h, mi, s, ns)) => {
                check(matches!(*t, Type::TIMESTAMP | Type::TIMESTAMPTZ), p, t)?;
                let time = time_micros(*h, *mi, *s, *ns)?;
                let micros = i64::from(pg_days(*y, *mo, *d)?)
                    .checked_mul(DAY_MICROS)
                    .and_then(|m| m.checked_add(time))
                    .ok_or("a date and time out of PostgreSQL's range")?;
                pp::timestamp_to_sql(micros, out);
            }
            P::Timestamp(secs) => {
                // Seconds since the Unix epoch, as Spin takes them.
                check(matches!(*t, Type::TIMESTAMP | Type::TIMESTAMPTZ), p, t)?;
                let micros = secs
                    .checked_sub(PG_EPOCH_UNIX_SECS)
                    .and_then(|s| s.checked_mul(1_000_000))
                    .ok_or("a timestamp out of range")?;
                pp::timestamp_to_sql(micros, out);
            }
            P::Uuid(v) => {
                check(*t == Type::UUID, p, t)?;
                pp::uuid_to_sql(uuid_bytes(v)?, out);
            }
            P::Jsonb(v) => match *t {
                Type::JSONB => {
                    out.put_u8(1);
                    out.put_slice(v);
                }
                Type::JSON => out.put_slice(v),
                _ => check(false, p, t)?,
            },
            P::Decimal(v) => {
                check(*t == Type::NUMERIC, p, t)?;
                numeric_to_sql(v, out)?;
            }
            P::RangeInt32(r) => {
                check(*t == Type::INT4_RANGE, p, t)?;
                range_to_sql(r, out, |v, b| {
                    pp::int4_to_sql(v, b);
                    Ok(())
                })?;
            }
            P::RangeInt64(r) => {
                check(*t == Type::INT8_RANGE, p, t)?;
                range_to_sql(r, out, |v, b| {
                    pp::int8_to_sql(v, b);
                    Ok(())
                })?;
            }
            P::RangeDecimal((lo, hi)) => {
                check(*t == Type::NUM_RANGE, p, t)?;
                let lo = lo.as_ref().map(|(v, k)| (v.as_str(), *k));
                let hi = hi.as_ref().map(|(v, k)| (v.as_str(), *k));
                range_to_sql(&(lo, hi), out, numeric_to_sql)?;
            }
            P::ArrayInt32(items) => {
                check(*t == Type::INT4_ARRAY, p, t)?;
                array_to_sql(items, &Type::INT4, out, |v, b| {
                    pp::int4_to_sql(v, b);
                    Ok(())
                })?;
            }
            P::ArrayInt64(items) => {
                check(*t == Type::INT8_ARRAY, p, t)?;
                array_to_sql(items, &Type::INT8, out, |v, b| {
                    pp::int8_to_sql(v, b);
                    Ok(())
                })?;
            }
            P::ArrayDecimal(items) => {
                check(*t == Type::NUMERIC_ARRAY, p, t)?;
                array_to_sql(items, &Type::NUMERIC, out, |v: String, b| {
                    numeric_to_sql(&v, b)
                })?;
            }
            P::ArrayStr(items) => {
                let element = match *t {
                    Type::TEXT_ARRAY => Type::TEXT,
                    Type::VARCHAR_ARRAY => Type::VARCHAR,
                    _ => return Err(check(false, p, t).unwrap_err()),
                };
                array_to_sql(items, &element, out, |v: String, b| {
                    pp::text_to_sql(&v, b);
                    Ok(())
                })?;
            }
            P::Interval(v) => {
                check(*t == Type::INTERVAL, p, t)?;
                out.put_i64(v.micros);
                out.put_i32(v.days);
                out.put_i32(v.months);
            }
        }
        Ok(IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

fn params(params: Vec<v4::ParameterValue>) -> Vec<Box<dyn ToSql + Send + Sync>> {
    params
        .into_iter()
        .map(|p| Box::new(Param(p)) as Box<dyn ToSql + Send + Sync>)
        .collect()
}

fn error(f: Failed) -> v4::Error {
    match f {
        Failed::Text(m) => {
            // tokio-postgres reports a parameter's own error as "error serializing parameter".
            if m.contains("error serializing parameter") {
                v4::Error::BadParameter(m)
            } else {
                v4::Error::QueryFailed(v4::QueryError::Text(m))
            }
        }
        Failed::Db(db) => v4::Error::QueryFailed(v4::QueryError::DbError(v4::DbError {
            as_text: db.to_string(),
            severity: db.severity().to_string(),
            code: db.code().code().to_string(),
            message: db.message().to_string(),
            detail: db.detail().map(str::to_string),
            extras: Vec::new(),
        })),
    }
}

fn column(c: &tokio_postgres::Column) -> v4::Column {
    v4::Column {
        name: c.name().to_string(),
        data_type: data_type(c.type_()),
    }
}

async fn query(
    conn: Arc<Shared>,
    statement: String,
    params: Vec<v4::ParameterValue>,
) -> Result<(Vec<v4::Column>, Vec<Vec<v4::DbValue>>, usize), v4::Error> {
    let params = self::params(params);
    conn.rows(&statement, &params, column, value)
        .await
        .map_err(|f| match f {
            RowsFailed::Query(f) => error(f),
            RowsFailed::Conversion(m) => v4::Error::ValueConversionFailed(m),
        })
}

async fn execute(
    conn: Arc<Shared>,
    statement: String,
    params: Vec<v4::ParameterValue>,
) -> Result<u64, v4::Error> {
    conn.execute(&statement, &self::params(params))
        .await
        .map_err(error)
}

impl PgView<'_> {
    fn shared(&self, c: &Resource<Connection>) -> Result<Arc<Shared>, v4::Error> {
        self.table
            .get(c)
            .map(|c| c.shared.clone())
            .map_err(|e| v4::Error::Other(e.to_string()))
    }

    async fn open_v4(&mut self, address: &str) -> Result<Resource<Connection>, v4::Error> {
        let conn = self
            .state
            .open_pg(address)
            .await
            .map_err(v4::Error::ConnectionFailed)?;
        self.table
            .push(conn)
            .map_err(|e| v4::Error::Other(e.to_string()))
    }
}

/// The store's connection `c`, and what opening one needs, without holding the store.
fn shared_of<T>(
    accessor: &Accessor<T, HasPg>,
    c: &Resource<Connection>,
) -> Result<Arc<Shared>, v4::Error> {
    accessor.with(|mut a| a.get().shared(c))
}

async fn open_with<T>(
    accessor: &Accessor<T, HasPg>,
    address: String,
) -> Result<Resource<Connection>, v4::Error> {
    let services = accessor.with(|mut a| a.get().state.clone());
    let conn = services
        .open_pg(&address)
        .await
        .map_err(v4::Error::ConnectionFailed)?;
    accessor.with(|mut a| {
        a.get()
            .table
            .push(conn)
            .map_err(|e| v4::Error::Other(e.to_string()))
    })
}

impl v4::Host for PgView<'_> {}

impl v4::HostConnectionBuilder for PgView<'_> {
    async fn new(&mut self, address: String) -> wasmtime::Result<Resource<Builder>> {
        Ok(self.table.push(Builder { address })?)
    }

    async fn set_ca_root(&mut self, _: Resource<Builder>, _: String) -> Result<(), v4::Error> {
        Err(v4::Error::Other(
            "wms connects to PostgreSQL without TLS; a CA root cannot be set".into(),
        ))
    }

    async fn build(&mut self, b: Resource<Builder>) -> Result<Resource<Connection>, v4::Error> {
        let address = self
            .table
            .get(&b)
            .map(|b| b.address.clone())
            .map_err(|e| v4::Error::Other(e.to_string()))?;
        self.open_v4(&address).await
    }

    async fn drop(&mut self, b: Resource<Builder>) -> wasmtime::Result<()> {
        self.table.delete(b)?;
        Ok(())
    }
}

impl v4::HostConnection for PgView<'_> {
    async fn open(&mut self, address: String) -> Result<Resource<Connection>, v4::Error> {
        self.open_v4(&address).await
    }

    async fn query(
        &mut self,
        c: Resource<Connection>,
        statement: String,
        params: Vec<v4::ParameterValue>,
    ) -> Result<v4::RowSet, v4::Error> {
        let (columns, rows, _) = query(self.shared(&c)?, statement, params).await?;
        Ok(v4::RowSet { columns, rows })
    }

    async fn execute(
        &mut self,
        c: Resource<Connection>,
        statement: String,
        params: Vec<v4::ParameterValue>,
    ) -> Result<u64, v4::Error> {
        execute(self.shared(&c)?, statement, params).await
    }

    async fn drop(&mut self, c: Resource<Connection>) -> wasmtime::Result<()> {
        self.table.delete(c)?;
        Ok(())
    }
}

impl<T> v4::HostConnectionBuilderWithStore<T> for HasPg {
    async fn build_async(
        accessor: &Accessor<T, Self>,
        b: Resource<Builder>,
    ) -> Result<Resource<Connection>, v4::Error> {
        let address = accessor.with(|mut a| {
            a.get()
                .table
                .get(&b)
                .map(|b| b.address.clone())
                .map_err(|e| v4::Error::Other(e.to_string()))
        })?;
        open_with(accessor, address).await
    }
}

impl<T> v4::HostConnectionWithStore<T> for HasPg {
    async fn open_async(
        accessor: &Accessor<T, Self>,
        address: String,
    ) -> Result<Resource<Connection>, v4::Error> {
        open_with(accessor, address).await
    }

    async fn query_async(
        accessor: &Accessor<T, Self>,
        c: Resource<Connection>,
        statement: String,
        params: Vec<v4::ParameterValue>,
    ) -> wasmtime::Result<
        Result<
            (
                Vec<v4::Column>,
                StreamReader<Vec<v4::DbValue>>,
                FutureReader<Result<(), v4::Error>>,
            ),
            v4::Error,
        >,
    > {
        let conn = match shared_of(accessor, &c) {
            Ok(conn) => conn,
            Err(e) => return Ok(Err(e)),
        };
        // A result may take up to its cap before it is known: room for that is taken from the
        // instance's unread-stream budget first, so concurrent queries cannot together make the
        // host hold more than the budget.
        let reserved = accessor.with(|mut a| {
            a.get()
                .streams
                .stream(Vec::<()>::new(), crate::postgres::MAX_RESULT_BYTES)
        });
        let reserved = match reserved {
            Ok(r) => r,
            Err(e) => return Ok(Err(v4::Error::Other(format!("the query was not run: {e}")))),
        };
        let result = query(conn, statement, params).await;
        drop(reserved);
        let (columns, rows, bytes) = match result {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        accessor.with(|mut a| {
            // Held until the guest reads them: counted with the instance's other unread streams.
            let rows = match a.get().streams.stream(rows, bytes) {
                Ok(rows) => rows,
                Err(e) => return Ok(Err(v4::Error::Other(format!("the query ran, but {e}")))),
            };
            let rows = StreamReader::new(&mut a, rows)?;
            let done =
                FutureReader::new(&mut a, std::future::ready(Ok::<_, wasmtime::Error>(Ok(()))))?;
            Ok(Ok((columns, rows, done)))
        })
    }

    async fn execute_async(
        accessor: &Accessor<T, Self>,
        c: Resource<Connection>,
        statement: String,
        params: Vec<v4::ParameterValue>,
    ) -> Result<u64, v4::Error> {
        execute(shared_of(accessor, &c)?, statement, params).await
    }
}

/// Links `spin:postgres/postgres@4.2.0`.
pub(crate) fn add_to_linker(
    linker: &mut wasmtime::component::Linker<HostState>,
) -> anyhow::Result<()> {
    v4::add_to_linker::<HostState, HasPg>(linker, HostState::postgres).map_err(wt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numerics_cross_in_both_directions() {
        for text in [
            "0",
            "1",
            "-1",
            "10000",
            "12345.678",
            "-0.0001",
            "0.5",
            "99999999.00000001",
            "1.10",
            "100000000",
        ] {
            let mut buf = BytesMut::new();
            numeric_to_sql(text, &mut buf).unwrap();
            assert_eq!(numeric_text(&buf).unwrap(), text, "{text}");
        }
        for bad in ["", ".", "1e5", "abc", "1.2.3", "--1"] {
            assert!(numeric_to_sql(bad, &mut BytesMut::new()).is_err(), "{bad}");
        }
        // Regression (review): its text, not its 10 wire bytes, is what a value costs.
        let mut buf = BytesMut::new();
        for word in [1u16, 32_000, 0, 0, 1] {
            buf.put_u16(word);
        }
        let text = numeric_text(&buf).unwrap();
        assert_eq!(text.len(), 1 + 32_000 * 4);
        assert_eq!(
            size(&v4::DbValue::Decimal(text)),
            std::mem::size_of::<v4::DbValue>() + 128_001
        );
        // Regression (review): 200 such numerics are 2.8 KB of array on the wire and 25 MB of
        // text; decoding stops at the result cap instead of building it all.
        let mut raw = BytesMut::new();
        pp::array_to_sql(
            [pp::ArrayDimension {
                len: 200,
                lower_bound: 1,
            }],
            1700,
            0..200,
            |_, out| {
                out.extend_from_slice(&buf);
                Ok(PpNull::No)
            },
            &mut raw,
        )
        .unwrap();
        assert!(raw.len() < 4096);
        let err = array(&raw, numeric_text, String::len)
            .unwrap_err()
            .to_string();
        assert!(err.contains("once decoded"), "{err}");
        // A short one decodes.
        raw.clear();
        pp::array_to_sql(
            [pp::ArrayDimension {
                len: 2,
                lower_bound: 1,
            }],
            1700,
            0..2,
            |_, out| {
                out.extend_from_slice(&buf);
                Ok(PpNull::No)
            },
            &mut raw,
        )
        .unwrap();
        assert_eq!(array(&raw, numeric_text, String::len).unwrap().len(), 2);
    }

    #[test]
    fn dates_and_times_cross_in_both_directions() {
        assert_eq!(pg_days(2000, 1, 1).unwrap(), 0);
        assert_eq!(pg_days(1999, 12, 31).unwrap(), -1);
        assert_eq!(
            civil_from_days(i64::from(pg_days(2024, 2, 29).unwrap()) + 10_957),
            (2024, 2, 29)
        );
        assert!(pg_days(2023, 2, 29).is_err());
        let micros = i64::from(pg_days(2026, 11, 26).unwrap()) * DAY_MICROS
            + time_micros(19, 5, 7, 123_456_000).unwrap();
        assert_eq!(
            split_datetime(micros),
            (2026, 11, 26, 19, 5, 7, 123_456_000)
        );
        assert_eq!(split_datetime(-1), (1999, 12, 31, 23, 59, 59, 999_999_000));
        assert_eq!(
            uuid_text(uuid_bytes("67e55044-10b1-426f-9247-bb680e5fe0c8").unwrap()),
            "67e55044-10b1-426f-9247-bb680e5fe0c8"
        );
        // Regression (review): 32 bytes that are not 32 hex digits, a multi-byte one among
        // them, are an error, not a panic.
        let tricky = format!("a\u{e9}{}", "0".repeat(29));
        assert_eq!(tricky.len(), 32);
        assert!(uuid_bytes(&tricky).is_err());
        // Regression (review): a year past PostgreSQL's range is an error, not an overflow.
        let p = Param(v4::ParameterValue::Datetime((1_000_000, 1, 1, 0, 0, 0, 0)));
        assert!(p.to_sql(&Type::TIMESTAMP, &mut BytesMut::new()).is_err());
    }
}
