//! A slab of connection slots with generations, so that a completion or event tagged with an old
//! (slot, generation) pair never reaches the connection that reused the slot.

/// Slots of `T`, reused after removal, each insertion with a new 24-bit generation.
#[derive(Debug)]
pub struct Slab<T> {
    slots: Vec<Option<(u32, T)>>,
    free: Vec<u32>,
    live: usize,
    next_gen: u32,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            next_gen: 0,
        }
    }
}

/// Generations are 24 bits wide (they share a u64 with an op code and the slot).
pub const GEN_MASK: u32 = (1 << 24) - 1;

impl<T> Slab<T> {
    /// Store `value`; returns its (slot, generation).
    pub fn insert(&mut self, value: T) -> (u32, u32) {
        let gen = self.next_gen & GEN_MASK;
        self.next_gen = self.next_gen.wrapping_add(1);
        self.live += 1;
        let slot = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some((gen, value));
                i
            }
            None => {
                self.slots.push(Some((gen, value)));
                (self.slots.len() - 1) as u32
            }
        };
        (slot, gen)
    }

    /// The value in `slot` if it is still of generation `gen`.
    pub fn get(&mut self, slot: u32, gen: u32) -> Option<&mut T> {
        match self.slots.get_mut(slot as usize) {
            Some(Some((g, v))) if *g == gen => Some(v),
            _ => None,
        }
    }

    /// The value in `slot` with its generation, whatever the generation.
    pub fn get_slot(&mut self, slot: u32) -> Option<(u32, &mut T)> {
        match self.slots.get_mut(slot as usize) {
            Some(Some((g, v))) => Some((*g, v)),
            _ => None,
        }
    }

    /// Remove and return the value in `slot`.
    pub fn remove(&mut self, slot: u32) -> Option<T> {
        let v = self.slots.get_mut(slot as usize)?.take()?;
        self.live -= 1;
        self.free.push(slot);
        Some(v.1)
    }

    /// Number of values stored.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether no value is stored.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// One past the highest slot ever used (for iterating slots by index).
    pub fn capacity_slots(&self) -> u32 {
        self.slots.len() as u32
    }

    /// Remove every value.
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.live = 0;
        self.free.clear();
        self.slots.drain(..).flatten().map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_generation_misses() {
        let mut s = Slab::default();
        let (a, ga) = s.insert("a");
        assert_eq!(s.get(a, ga), Some(&mut "a"));
        assert_eq!(s.remove(a), Some("a"));
        let (b, gb) = s.insert("b");
        assert_eq!(a, b, "slot reused");
        assert_ne!(ga, gb);
        assert_eq!(s.get(a, ga), None);
        assert_eq!(s.get(b, gb), Some(&mut "b"));
        assert_eq!(s.len(), 1);
        assert_eq!(s.remove(a), Some("b"));
        assert_eq!(s.remove(a), None);
        assert!(s.is_empty());
    }
}
