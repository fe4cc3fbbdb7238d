//! Allocation storage indexed by id: an [`AllocId`] carries the slot its
//! allocation lives in, so the per-packet lookup is an index and a compare,
//! not a hash of the id (which with thousands of allocations costs a cache
//! miss in the table and another in the entry). The I/O layer indexes its
//! relay table by the same slot ([`AllocId::slot`]).
//!
//! Id layout: worker in bits 48-63, generation in bits 24-47, slot in bits
//! 0-23. The generation changes each time a slot is reused, so an id held
//! after its allocation closed (a relay task not yet stopped, a datagram
//! handed over from another worker) never finds the slot's next tenant.

const SLOT_BITS: u32 = 24;
const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;
const GENERATION_MASK: u64 = (1 << 24) - 1;

/// Identifies an allocation and its relay socket across the core/I-O line:
/// worker, generation and slot (see the module docs). Never 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AllocId(u64);

impl AllocId {
    /// The slot this id names (an index into per-slot tables).
    pub fn slot(self) -> usize {
        (self.0 & SLOT_MASK) as usize
    }

    /// The worker this id names.
    pub fn worker(self) -> usize {
        (self.0 >> 48) as usize
    }

    /// The id as one integer, e.g. for an atomic table (never 0).
    pub fn to_bits(self) -> u64 {
        self.0
    }

    /// The id stored by [`AllocId::to_bits`]; `None` for 0 (no id).
    pub fn from_bits(bits: u64) -> Option<Self> {
        (bits != 0).then_some(Self(bits))
    }
}

impl std::fmt::Display for AllocId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

struct Entry<T> {
    /// The id of the current (or, when vacant, the last) tenant.
    id: AllocId,
    value: Option<T>,
}

/// Values keyed by the [`AllocId`] they were given on insertion.
pub struct Slab<T> {
    worker: u64,
    entries: Vec<Entry<T>>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Slab<T> {
    /// An empty slab whose ids name `worker`.
    pub fn new(worker: u16) -> Self {
        Self {
            worker: u64::from(worker) << 48,
            entries: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }

    /// The id the next [`Slab::insert`] will return, or `None` when every
    /// one of the 2^24 slots is taken.
    pub fn next_id(&self) -> Option<AllocId> {
        match self.free.last() {
            Some(&s) => {
                let last = self.entries[s as usize].id.0;
                let generation = ((last >> SLOT_BITS) + 1) & GENERATION_MASK;
                Some(AllocId(
                    self.worker | (generation << SLOT_BITS) | u64::from(s),
                ))
            }
            // A fresh slot starts at generation 1: no id is 0.
            None if (self.entries.len() as u64) <= SLOT_MASK => Some(AllocId(
                self.worker | (1 << SLOT_BITS) | self.entries.len() as u64,
            )),
            None => None,
        }
    }

    /// Store `value` under `id`, which must come from [`Slab::next_id`]
    /// with no insertion in between.
    pub fn insert(&mut self, id: AllocId, value: T) {
        let s = id.slot();
        debug_assert_eq!(self.next_id(), Some(id));
        if s == self.entries.len() {
            self.entries.push(Entry {
                id,
                value: Some(value),
            });
        } else {
            self.free.pop();
            self.entries[s] = Entry {
                id,
                value: Some(value),
            };
        }
        self.len += 1;
    }

    /// The value stored under `id`, if it is still there.
    pub fn get(&self, id: AllocId) -> Option<&T> {
        self.entries
            .get(id.slot())
            .filter(|e| e.id == id)
            .and_then(|e| e.value.as_ref())
    }

    /// The value stored under `id`, to change.
    pub fn get_mut(&mut self, id: AllocId) -> Option<&mut T> {
        self.entries
            .get_mut(id.slot())
            .filter(|e| e.id == id)
            .and_then(|e| e.value.as_mut())
    }

    /// Take the value stored under `id` out; its slot is reused later.
    pub fn remove(&mut self, id: AllocId) -> Option<T> {
        let e = self.entries.get_mut(id.slot()).filter(|e| e.id == id)?;
        let value = e.value.take()?;
        self.free.push(id.slot() as u32);
        self.len -= 1;
        Some(value)
    }

    /// Values stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every stored value.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().filter_map(|e| e.value.as_ref())
    }

    /// Every stored value, to change.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.entries.iter_mut().filter_map(|e| e.value.as_mut())
    }

    /// Ids of every stored value.
    pub fn ids(&self) -> impl Iterator<Item = AllocId> + '_ {
        self.entries
            .iter()
            .filter(|e| e.value.is_some())
            .map(|e| e.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_worker_slot_and_generation() {
        let mut s = Slab::new(3);
        let a = s.next_id().unwrap();
        s.insert(a, "a");
        let b = s.next_id().unwrap();
        s.insert(b, "b");
        assert_eq!(a.worker(), 3);
        assert_eq!((a.slot(), b.slot()), (0, 1));
        assert_eq!((s.get(a), s.get(b), s.len()), (Some(&"a"), Some(&"b"), 2));
        assert!(!s.is_empty());

        // A freed slot is reused under a new generation: the old id no
        // longer finds anything.
        assert_eq!(s.remove(a), Some("a"));
        assert_eq!(s.remove(a), None);
        let c = s.next_id().unwrap();
        s.insert(c, "c");
        assert_eq!(c.slot(), a.slot());
        assert_ne!(c, a);
        assert_eq!((s.get(a), s.get(c)), (None, Some(&"c")));
        assert!(s.get_mut(a).is_none());
        assert_eq!(s.len(), 2);
        let mut ids: Vec<_> = s.ids().collect();
        ids.sort_unstable();
        assert_eq!(ids, {
            let mut v = vec![b, c];
            v.sort_unstable();
            v
        });
        // Ids from elsewhere (another worker, out of range) find nothing.
        assert_eq!(s.get(AllocId(c.0 ^ (1 << 48))), None);
        assert_eq!(s.get(AllocId(1000)), None);
        assert_eq!(AllocId::from_bits(c.to_bits()), Some(c));
        assert_eq!(AllocId::from_bits(0), None);
    }
}
