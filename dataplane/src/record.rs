//! How records cross a ring: the [`Wire`] codec.
//!
//! Plain-old-data records are copied as their bytes (bytemuck), with no allocation and no
//! per-field work; other types (strings, vectors, tuples of them) go through an explicit,
//! length-prefixed encoding. Decoding never trusts the bytes: a short or malformed frame
//! is a [`DecodeError`], never a panic.

use std::hash::Hash;

/// A frame's bytes do not decode as the expected record type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot decode {ty} from a {len}-byte frame: {reason}")]
pub struct DecodeError {
    /// The record type.
    pub ty: &'static str,
    /// Frame payload length.
    pub len: usize,
    /// What was wrong.
    pub reason: &'static str,
}

impl DecodeError {
    fn new<T>(len: usize, reason: &'static str) -> Self {
        Self {
            ty: std::any::type_name::<T>(),
            len,
            reason,
        }
    }
}

/// A record type that can cross a ring.
///
/// Performance contract: for POD types (`pod_wire!`), `encode` and `decode` are one
/// unaligned copy of `size_of::<T>()` bytes and allocate nothing.
pub trait Wire: Sized + Send + Sync + 'static {
    /// `Some(n)` when every record encodes to exactly `n` bytes and every `n`-byte
    /// pattern decodes (plain old data): batches of such records are laid out back to
    /// back and decoded with one copy, straight from the ring. `None` (the default):
    /// each record is length-prefixed, and a batch is decoded from a private copy of
    /// its frame, so that a peer that rewrites shared memory under the decoder cannot
    /// make a validated value (UTF-8, a length) change between check and use.
    const FIXED_LEN: Option<usize> = None;
    /// Bytes `encode` writes.
    fn encoded_len(&self) -> usize;
    /// Writes exactly `encoded_len()` bytes into `buf` (which has that length).
    fn encode(&self, buf: &mut [u8]);
    /// Reads a record from exactly the bytes `encode` wrote.
    fn decode(buf: &[u8]) -> Result<Self, DecodeError>;
    /// Writes fixed-size records back to back into `buf` (of `records.len() · n` bytes;
    /// only called when `FIXED_LEN` is `Some(n)`).
    fn encode_fixed_slice(records: &[Self], buf: &mut [u8]) {
        let n = Self::FIXED_LEN.unwrap_or(0);
        if n == 0 {
            return;
        }
        for (r, o) in records.iter().zip(buf.chunks_exact_mut(n)) {
            r.encode(o);
        }
    }
    /// Appends the `bytes.len() / n` fixed-size records in `bytes` to `out` (only called
    /// when `FIXED_LEN` is `Some(n)` with `n > 0` and `bytes.len()` a multiple of `n`).
    fn decode_fixed(bytes: &[u8], out: &mut Vec<Self>) -> Result<(), DecodeError> {
        let n = Self::FIXED_LEN.unwrap_or(1).max(1);
        for chunk in bytes.chunks_exact(n) {
            out.push(Self::decode(chunk)?);
        }
        Ok(())
    }
}

/// A record type a stream can carry.
pub trait Data: Wire + Clone + std::fmt::Debug {}
impl<T: Wire + Clone + std::fmt::Debug> Data for T {}

/// A type streams can be keyed by. Keys are part of keyed state, so checkpoints write
/// them: they implement serde's `Serialize` and `Deserialize` (as integers, strings and
/// tuples of them do; derive them for a key type of your own).
pub trait Key:
    Hash
    + Eq
    + Clone
    + Send
    + Sync
    + std::fmt::Debug
    + serde::Serialize
    + serde::de::DeserializeOwned
    + 'static
{
}
impl<
        T: Hash
            + Eq
            + Clone
            + Send
            + Sync
            + std::fmt::Debug
            + serde::Serialize
            + serde::de::DeserializeOwned
            + 'static,
    > Key for T
{
}

/// Implements [`Wire`] for plain-old-data types (which must implement `bytemuck::Pod`):
/// the record's bytes are the frame.
#[macro_export]
macro_rules! pod_wire {
    ($($t:ty),* $(,)?) => {$(
        impl $crate::record::Wire for $t {
            const FIXED_LEN: Option<usize> = Some(::std::mem::size_of::<$t>());
            #[inline(always)]
            fn encoded_len(&self) -> usize {
                ::std::mem::size_of::<$t>()
            }
            #[inline(always)]
            fn encode(&self, buf: &mut [u8]) {
                buf.copy_from_slice($crate::record::bytemuck::bytes_of(self));
            }
            #[inline(always)]
            fn decode(buf: &[u8]) -> Result<Self, $crate::record::DecodeError> {
                if buf.len() != ::std::mem::size_of::<$t>() {
                    return Err($crate::record::DecodeError {
                        ty: ::std::any::type_name::<$t>(),
                        len: buf.len(),
                        reason: "length differs from the record's size",
                    });
                }
                Ok($crate::record::bytemuck::pod_read_unaligned(buf))
            }
            #[inline]
            fn encode_fixed_slice(records: &[Self], buf: &mut [u8]) {
                // One copy of the whole batch.
                buf.copy_from_slice($crate::record::bytemuck::cast_slice(records));
            }
            #[inline]
            fn decode_fixed(
                bytes: &[u8],
                out: &mut Vec<Self>,
            ) -> Result<(), $crate::record::DecodeError> {
                // In place where the bytes are aligned for the type (batch frames are
                // laid out so that they are), one unaligned read per record otherwise.
                match $crate::record::bytemuck::try_cast_slice::<u8, $t>(bytes) {
                    Ok(records) => out.extend_from_slice(records),
                    Err(_) => out.extend(
                        bytes
                            .chunks_exact(::std::mem::size_of::<$t>())
                            .map($crate::record::bytemuck::pod_read_unaligned::<$t>),
                    ),
                }
                Ok(())
            }
        }
    )*};
}

#[doc(hidden)]
pub use bytemuck;

pod_wire!(
    u8,
    u16,
    u32,
    u64,
    i8,
    i16,
    i32,
    i64,
    f32,
    f64,
    usize,
    isize,
    ()
);

impl Wire for bool {
    fn encoded_len(&self) -> usize {
        1
    }
    fn encode(&self, buf: &mut [u8]) {
        buf[0] = u8::from(*self);
    }
    fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        match buf {
            [0] => Ok(false),
            [1] => Ok(true),
            _ => Err(DecodeError::new::<bool>(buf.len(), "not a bool byte")),
        }
    }
}

impl Wire for String {
    fn encoded_len(&self) -> usize {
        self.len()
    }
    fn encode(&self, buf: &mut [u8]) {
        buf.copy_from_slice(self.as_bytes());
    }
    fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        std::str::from_utf8(buf)
            .map(str::to_owned)
            .map_err(|_| DecodeError::new::<String>(buf.len(), "invalid UTF-8"))
    }
}

impl<T: Wire> Wire for Vec<T> {
    fn encoded_len(&self) -> usize {
        self.iter().map(|x| 4 + x.encoded_len()).sum()
    }
    fn encode(&self, mut buf: &mut [u8]) {
        for x in self {
            buf = put_prefixed(buf, x);
        }
    }
    fn decode(mut buf: &[u8]) -> Result<Self, DecodeError> {
        let mut v = Vec::new();
        while !buf.is_empty() {
            let (x, rest) = take_prefixed::<T>(buf)?;
            v.push(x);
            buf = rest;
        }
        Ok(v)
    }
}

impl<T: Wire> Wire for Option<T> {
    fn encoded_len(&self) -> usize {
        1 + self.as_ref().map_or(0, Wire::encoded_len)
    }
    fn encode(&self, buf: &mut [u8]) {
        match self {
            None => buf[0] = 0,
            Some(x) => {
                buf[0] = 1;
                x.encode(&mut buf[1..]);
            }
        }
    }
    fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        match buf.split_first() {
            Some((0, [])) => Ok(None),
            Some((1, rest)) => Ok(Some(T::decode(rest)?)),
            _ => Err(DecodeError::new::<Self>(buf.len(), "bad option tag")),
        }
    }
}

/// A record of one of two types: how two streams of different types travel as one
/// (window joins and co-groups union their inputs so; Flink's `TaggedUnion`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Either<A, B> {
    /// A record of the first stream.
    Left(A),
    /// A record of the second stream.
    Right(B),
}

impl<A: Wire, B: Wire> Wire for Either<A, B> {
    fn encoded_len(&self) -> usize {
        1 + match self {
            Either::Left(a) => a.encoded_len(),
            Either::Right(b) => b.encoded_len(),
        }
    }
    fn encode(&self, buf: &mut [u8]) {
        match self {
            Either::Left(a) => {
                buf[0] = 0;
                a.encode(&mut buf[1..]);
            }
            Either::Right(b) => {
                buf[0] = 1;
                b.encode(&mut buf[1..]);
            }
        }
    }
    fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        match buf.split_first() {
            Some((0, rest)) => Ok(Either::Left(A::decode(rest)?)),
            Some((1, rest)) => Ok(Either::Right(B::decode(rest)?)),
            _ => Err(DecodeError::new::<Self>(buf.len(), "bad either tag")),
        }
    }
}

fn put_prefixed<'a, T: Wire>(buf: &'a mut [u8], x: &T) -> &'a mut [u8] {
    let n = x.encoded_len();
    let (len, rest) = buf.split_at_mut(4);
    len.copy_from_slice(&(n as u32).to_le_bytes());
    let (body, rest) = rest.split_at_mut(n);
    x.encode(body);
    rest
}

fn take_prefixed<T: Wire>(buf: &[u8]) -> Result<(T, &[u8]), DecodeError> {
    let err = |r| DecodeError::new::<T>(buf.len(), r);
    let (len, rest) = buf
        .split_first_chunk::<4>()
        .ok_or_else(|| err("truncated length"))?;
    let n = u32::from_le_bytes(*len) as usize;
    if n > rest.len() {
        return Err(err("length prefix beyond the frame"));
    }
    let (body, rest) = rest.split_at(n);
    Ok((T::decode(body)?, rest))
}

macro_rules! tuple_wire {
    ($($name:ident),+) => {
        impl<$($name: Wire),+> Wire for ($($name,)+) {
            fn encoded_len(&self) -> usize {
                #[allow(non_snake_case)]
                let ($($name,)+) = self;
                0 $(+ 4 + $name.encoded_len())+
            }
            fn encode(&self, buf: &mut [u8]) {
                #[allow(non_snake_case)]
                let ($($name,)+) = self;
                let rest = buf;
                $(let rest = put_prefixed(rest, $name);)+
                let _ = rest;
            }
            fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
                let rest = buf;
                $(#[allow(non_snake_case)] let ($name, rest) = take_prefixed::<$name>(rest)?;)+
                if !rest.is_empty() {
                    return Err(DecodeError::new::<Self>(buf.len(), "trailing bytes"));
                }
                Ok(($($name,)+))
            }
        }
    };
}

tuple_wire!(A, B);
tuple_wire!(A, B, C);
tuple_wire!(A, B, C, D);
tuple_wire!(A, B, C, D, E);
tuple_wire!(A, B, C, D, E, F);

/// Encodes into a fresh vector (tests and slow paths).
pub fn to_vec<T: Wire>(x: &T) -> Vec<u8> {
    let mut v = vec![0; x.encoded_len()];
    x.encode(&mut v);
    v
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn round<T: Wire + PartialEq + std::fmt::Debug>(x: T) {
        assert_eq!(T::decode(&to_vec(&x)).unwrap(), x);
    }

    #[test]
    fn round_trips() {
        round(42u64);
        round(-7i32);
        round(1.5f64);
        round(true);
        round(String::from("héllo"));
        round(vec![String::from("a"), String::new(), String::from("ccc")]);
        round((String::from("word"), 3u64));
        round((1u8, String::from("x"), Some(9u32)));
        round(Option::<u64>::None);
        round(Either::<u64, String>::Left(5));
        round(Either::<u64, String>::Right(String::from("r")));
    }

    #[test]
    fn malformed_bytes_are_errors_not_panics() {
        assert!(u64::decode(&[1, 2, 3]).is_err());
        assert!(String::decode(&[0xff, 0xfe]).is_err());
        assert!(bool::decode(&[7]).is_err());
        assert!(<(String, u64)>::decode(&[200, 0, 0, 0, 1]).is_err());
        assert!(<(String, u64)>::decode(&[1, 0]).is_err());
        assert!(Vec::<u32>::decode(&[4, 0, 0, 0, 1, 2]).is_err());
        assert!(Either::<u8, u8>::decode(&[2, 1]).is_err());
        assert!(Either::<u8, u8>::decode(&[]).is_err());
        let mut ok = to_vec(&(String::from("a"), 1u64));
        ok.push(0);
        assert!(<(String, u64)>::decode(&ok).is_err());
    }
}
