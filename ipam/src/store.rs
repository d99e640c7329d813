//! The on-disk layout and the table operations every pool operation is built from.
//!
//! Layout, schema version 1, one database per address family:
//! - `by_key` (IPv6: `by_key6`): `(container_id, ifname)` → `(ip, meta bytes)`, the
//!   address as a `u32` (IPv6: `u128`);
//! - `by_ip` (IPv6: `by_ip6`): `ip` → `(container_id, ifname)`;
//! - `meta`: `&str` → `u64`, with the keys [`M_SCHEMA`], [`M_SUBNET_ADDR`], [`M_SUBNET_PREFIX`]
//!   and (once something was allocated without a requested address) [`M_CURSOR`]. An
//!   IPv6 database also records [`M_FAMILY`], and the high 64 bits of the subnet's
//!   address and of the cursor under the same names with [`HI`] appended (a value whose
//!   high half is zero has no such entry, so an IPv4 database is as it always was).
//!
//! `by_key` and `by_ip` are two views of one bijection; every write changes both in the same
//! write transaction, and [`check`] verifies it.

use std::path::Path;

use redb::{ReadableTable, Table, TableDefinition, WriteTransaction};

use crate::span::Span;
use crate::{Error, Family, Key};

/// The key column: `(container_id, ifname)`.
pub(crate) type KeyCol = (&'static str, &'static str);
/// The `by_key` value column: `(ip, meta)`.
pub(crate) type AllocCol<N> = (<N as Family>::Int, &'static [u8]);

pub(crate) const META: TableDefinition<'static, &str, u64> = TableDefinition::new("meta");

/// The layout version this build writes and reads.
pub(crate) const SCHEMA_VERSION: u64 = 1;
pub(crate) const M_SCHEMA: &str = "schema_version";
pub(crate) const M_SUBNET_ADDR: &str = "subnet_addr";
pub(crate) const M_SUBNET_PREFIX: &str = "subnet_prefix";
/// The last address handed out by the round-robin search.
pub(crate) const M_CURSOR: &str = "last_allocated";
/// The family of an IPv6 database (6); an IPv4 one has none.
pub(crate) const M_FAMILY: &str = "family";
/// What a `meta` name takes for the high 64 bits of its value.
pub(crate) const HI: &str = ".hi";

/// Wraps a store error with the database and the operation.
pub(crate) fn store_err<'a, E: Into<redb::Error>>(
    db: &'a Path,
    op: &'static str,
) -> impl FnOnce(E) -> Error + 'a {
    move |e| Error::Store {
        db: db.to_path_buf(),
        op,
        source: Box::new(e.into()),
    }
}

fn key_col(key: &Key) -> (&str, &str) {
    (key.container_id.as_str(), key.ifname.as_str())
}

fn key_of((c, i): (&str, &str)) -> Key {
    Key::new(c, i)
}

/// Reads one key's `(ip, meta)`.
pub(crate) fn lookup<N: Family>(
    by_key: &impl ReadableTable<KeyCol, AllocCol<N>>,
    key: &Key,
) -> Result<Option<(u128, Vec<u8>)>, redb::StorageError> {
    Ok(by_key.get(key_col(key))?.map(|g| {
        let (ip, meta) = g.value();
        (ip.into(), meta.to_vec())
    }))
}

/// Reads which key holds `ip`.
pub(crate) fn owner<N: Family>(
    by_ip: &impl ReadableTable<N::Int, KeyCol>,
    ip: u128,
) -> Result<Option<Key>, redb::StorageError> {
    Ok(by_ip.get(N::to_int(ip))?.map(|g| key_of(g.value())))
}

/// Reads every allocation as `(key, ip, meta)`, in key order.
pub(crate) fn all<N: Family>(
    by_key: &impl ReadableTable<KeyCol, AllocCol<N>>,
) -> Result<Vec<(Key, u128, Vec<u8>)>, redb::StorageError> {
    by_key
        .iter()?
        .map(|entry| {
            let (k, v) = entry?;
            let (ip, meta) = v.value();
            Ok((key_of(k.value()), ip.into(), meta.to_vec()))
        })
        .collect()
}

/// Finds the first free address after `cursor`, wrapping around to the start of the range, the
/// way CNI host-local does; `None` when every usable address is taken.
///
/// A cursor outside the usable range (none yet, or left by another subnet) starts the search at
/// the first usable address. Runs of taken addresses are skipped by walking `by_ip` in order, so
/// the cost is one range scan, not one lookup per address.
pub(crate) fn next_free<N: Family>(
    by_ip: &impl ReadableTable<N::Int, KeyCol>,
    span: &Span<N>,
    cursor: Option<u128>,
) -> Result<Option<u128>, redb::StorageError> {
    let (first, last) = (span.first(), span.last());
    let start = match cursor {
        Some(c) if (first..last).contains(&c) => c + 1,
        _ => first,
    };
    if let Some(ip) = first_gap::<N>(by_ip, start, last)? {
        return Ok(Some(ip));
    }
    if start > first {
        return first_gap::<N>(by_ip, first, start - 1);
    }
    Ok(None)
}

/// The lowest address of `lo..=hi` absent from `by_ip`.
fn first_gap<N: Family>(
    by_ip: &impl ReadableTable<N::Int, KeyCol>,
    lo: u128,
    hi: u128,
) -> Result<Option<u128>, redb::StorageError> {
    let mut candidate = lo;
    for entry in by_ip.range(N::to_int(lo)..=N::to_int(hi))? {
        let taken: u128 = entry?.0.value().into();
        if taken > candidate {
            break;
        }
        if candidate == hi {
            return Ok(None);
        }
        candidate = taken + 1;
    }
    Ok(Some(candidate))
}

/// Verifies that `by_key` and `by_ip` describe the same bijection and that every address is
/// usable in `span`; returns the number of allocations.
pub(crate) fn check<N: Family>(
    db: &Path,
    by_key: &impl ReadableTable<KeyCol, AllocCol<N>>,
    by_ip: &impl ReadableTable<N::Int, KeyCol>,
    span: &Span<N>,
) -> Result<u64, Error> {
    let corrupt = |detail: String| Error::Corrupt {
        db: db.to_path_buf(),
        detail,
    };
    let read = || store_err(db, "check consistency");
    let mut count = 0u64;
    for entry in by_key.iter().map_err(read())? {
        let (k, v) = entry.map_err(read())?;
        let key = key_of(k.value());
        let ip: u128 = v.value().0.into();
        let shown = N::addr(ip);
        if !span.is_usable(ip) {
            return Err(corrupt(format!(
                "by_key: {key} holds {shown}, which is not a usable address of {}",
                span.net()
            )));
        }
        match owner::<N>(by_ip, ip).map_err(read())? {
            Some(o) if o == key => {}
            Some(o) => {
                return Err(corrupt(format!(
                    "by_key: {key} holds {shown}, but by_ip gives it to {o}"
                )))
            }
            None => {
                return Err(corrupt(format!(
                    "by_key: {key} holds {shown}, but by_ip has no entry for it"
                )))
            }
        }
        count += 1;
    }
    for entry in by_ip.iter().map_err(read())? {
        let (ip, k) = entry.map_err(read())?;
        let (ip, key): (u128, Key) = (ip.value().into(), key_of(k.value()));
        let shown = N::addr(ip);
        match lookup::<N>(by_key, &key).map_err(read())? {
            Some((held, _)) if held == ip => {}
            Some((held, _)) => {
                return Err(corrupt(format!(
                    "by_ip: {shown} belongs to {key}, but by_key says {key} holds {}",
                    N::addr(held)
                )))
            }
            None => {
                return Err(corrupt(format!(
                    "by_ip: {shown} belongs to {key}, which by_key does not know"
                )))
            }
        }
    }
    Ok(count)
}

/// The three tables, open in one write transaction.
///
/// Mutations go through methods that keep `by_key` and `by_ip` in step and mark the transaction
/// dirty, so that a pool operation that changed nothing aborts instead of paying for a commit.
pub(crate) struct Tables<'txn, N: Family> {
    db: &'txn Path,
    pub(crate) by_key: Table<'txn, KeyCol, AllocCol<N>>,
    pub(crate) by_ip: Table<'txn, N::Int, KeyCol>,
    pub(crate) meta: Table<'txn, &'static str, u64>,
    pub(crate) dirty: bool,
}

impl<'txn, N: Family> Tables<'txn, N> {
    /// Opens (creating when absent) the tables in `txn`.
    pub(crate) fn open(txn: &'txn WriteTransaction, db: &'txn Path) -> Result<Self, Error> {
        let open = |what| store_err(db, what);
        Ok(Tables {
            db,
            by_key: txn
                .open_table(N::BY_KEY)
                .map_err(open("open table by_key"))?,
            by_ip: txn.open_table(N::BY_IP).map_err(open("open table by_ip"))?,
            meta: txn.open_table(META).map_err(open("open table meta"))?,
            dirty: false,
        })
    }

    fn err<E: Into<redb::Error>>(&self, op: &'static str) -> impl FnOnce(E) -> Error + 'txn {
        store_err(self.db, op)
    }

    /// Reports an inconsistency found while changing the tables.
    pub(crate) fn corrupt(&self, detail: String) -> Error {
        Error::Corrupt {
            db: self.db.to_path_buf(),
            detail,
        }
    }

    /// Reads one key's `(ip, meta)`.
    pub(crate) fn lookup(&self, key: &Key) -> Result<Option<(u128, Vec<u8>)>, Error> {
        lookup::<N>(&self.by_key, key).map_err(self.err("read by_key"))
    }

    /// Reads which key holds `ip`.
    pub(crate) fn owner(&self, ip: u128) -> Result<Option<Key>, Error> {
        owner::<N>(&self.by_ip, ip).map_err(self.err("read by_ip"))
    }

    /// Reads a `meta` entry.
    pub(crate) fn meta(&self, name: &str) -> Result<Option<u64>, Error> {
        Ok(self
            .meta
            .get(name)
            .map_err(self.err("read meta"))?
            .map(|g| g.value()))
    }

    /// Reads a 128-bit `meta` value: `name`, and the high half under `name` + [`HI`].
    pub(crate) fn wide(&self, name: &str) -> Result<Option<u128>, Error> {
        let hi = self.meta(&format!("{name}{HI}"))?;
        Ok(match (self.meta(name)?, hi) {
            (None, None) => None,
            (Some(lo), hi) => Some(u128::from(lo) | u128::from(hi.unwrap_or(0)) << 64),
            (None, Some(_)) => return Err(self.corrupt(format!("meta holds half of {name}"))),
        })
    }

    /// Writes a 128-bit `meta` value, its high half only if it is not zero.
    #[allow(clippy::cast_possible_truncation)] // the two halves
    pub(crate) fn set_wide(&mut self, name: &str, value: u128) -> Result<(), Error> {
        self.set_meta(name, value as u64)?;
        let hi_name = format!("{name}{HI}");
        match (value >> 64) as u64 {
            0 => self.clear_meta(&hi_name),
            hi => self.set_meta(&hi_name, hi),
        }
    }

    /// Removes a 128-bit `meta` value, both halves.
    pub(crate) fn clear_wide(&mut self, name: &str) -> Result<(), Error> {
        self.clear_meta(name)?;
        self.clear_meta(&format!("{name}{HI}"))
    }

    /// Writes a `meta` entry.
    pub(crate) fn set_meta(&mut self, name: &str, value: u64) -> Result<(), Error> {
        self.dirty = true;
        self.meta
            .insert(name, value)
            .map_err(store_err(self.db, "write meta"))?;
        Ok(())
    }

    /// Removes a `meta` entry.
    pub(crate) fn clear_meta(&mut self, name: &str) -> Result<(), Error> {
        if self.meta(name)?.is_none() {
            return Ok(());
        }
        self.dirty = true;
        self.meta
            .remove(name)
            .map_err(store_err(self.db, "write meta"))?;
        Ok(())
    }

    /// Reads the family the database records: 4 when it records none.
    pub(crate) fn family(&self) -> Result<u64, Error> {
        Ok(self.meta(M_FAMILY)?.unwrap_or(4))
    }

    /// Reads the subnet recorded in `meta`, if any.
    pub(crate) fn subnet(&self) -> Result<Option<N>, Error> {
        let (addr, len) = match (self.wide(M_SUBNET_ADDR)?, self.meta(M_SUBNET_PREFIX)?) {
            (None, None) => return Ok(None),
            (Some(a), Some(l)) => (a, l),
            _ => return Err(self.corrupt("meta holds half a subnet".into())),
        };
        let net = u8::try_from(len).ok().and_then(|l| N::build(addr, l));
        net.map(Some).ok_or_else(|| {
            self.corrupt(format!(
                "meta holds subnet address {addr} and prefix {len}, which is no {} subnet",
                N::NAME
            ))
        })
    }

    /// Records the subnet in `meta`.
    pub(crate) fn set_subnet(&mut self, net: N) -> Result<(), Error> {
        let (addr, len) = net.parts();
        self.set_wide(M_SUBNET_ADDR, addr)?;
        self.set_meta(M_SUBNET_PREFIX, u64::from(len))
    }

    /// Reads the round-robin cursor.
    pub(crate) fn cursor(&self) -> Result<Option<u128>, Error> {
        self.wide(M_CURSOR)
    }

    /// Inserts or overwrites `key`'s allocation, in both directions.
    ///
    /// The caller has checked that `ip` is free or already `key`'s.
    pub(crate) fn insert(&mut self, key: &Key, ip: u128, meta: &[u8]) -> Result<(), Error> {
        self.dirty = true;
        self.by_key
            .insert(key_col(key), (N::to_int(ip), meta))
            .map_err(store_err(self.db, "write by_key"))?;
        self.by_ip
            .insert(N::to_int(ip), key_col(key))
            .map_err(store_err(self.db, "write by_ip"))?;
        Ok(())
    }

    /// Removes `key`'s allocation from both tables, returning `(ip, meta)`.
    pub(crate) fn remove(&mut self, key: &Key) -> Result<Option<(u128, Vec<u8>)>, Error> {
        let Some((ip, meta)) = self
            .by_key
            .remove(key_col(key))
            .map_err(store_err(self.db, "write by_key"))?
            .map(|g| {
                let (ip, meta) = g.value();
                (ip.into(), meta.to_vec())
            })
        else {
            return Ok(None);
        };
        self.dirty = true;
        let owner = self
            .by_ip
            .remove(N::to_int(ip))
            .map_err(store_err(self.db, "write by_ip"))?
            .map(|g| key_of(g.value()));
        if owner.as_ref() != Some(key) {
            let found = owner.map_or_else(|| "nothing".to_string(), |o| o.to_string());
            return Err(self.corrupt(format!(
                "by_key: {key} holds {}, but by_ip gives it to {found}",
                N::addr(ip)
            )));
        }
        Ok(Some((ip, meta)))
    }
}
