//! The key/value cache: per layer, `[n_kv_heads, capacity, head_dim]` for keys and for
//! values, so each head's keys are contiguous for the attention kernel.

/// Keys and values of every layer for the tokens seen so far.
#[derive(Clone, Debug)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    len: usize,
}

#[derive(Clone, Debug)]
pub struct LayerCache {
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    n_kv_heads: usize,
    head_dim: usize,
    capacity: usize,
}

impl KvCache {
    pub fn new(n_layers: usize, n_kv_heads: usize, head_dim: usize) -> Self {
        let layer = LayerCache {
            k: Vec::new(),
            v: Vec::new(),
            n_kv_heads,
            head_dim,
            capacity: 0,
        };
        Self {
            layers: vec![layer; n_layers],
            len: 0,
        }
    }

    /// Whether this cache has the shape of a model with these dimensions.
    pub fn fits(&self, n_layers: usize, n_kv_heads: usize, head_dim: usize) -> bool {
        self.layers.len() == n_layers
            && self
                .layers
                .iter()
                .all(|l| l.n_kv_heads == n_kv_heads && l.head_dim == head_dim)
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets everything (keeps the memory).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Drops positions from `len` on, e.g. to reuse a shared prompt prefix.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Makes room for `positions` positions, doubling to amortise growth.
    pub(crate) fn reserve(&mut self, positions: usize) {
        for layer in &mut self.layers {
            layer.reserve(positions);
        }
    }

    pub(crate) fn set_len(&mut self, len: usize) {
        self.len = len;
    }

    pub(crate) fn layer_mut(&mut self, layer: usize) -> &mut LayerCache {
        &mut self.layers[layer]
    }
}

impl LayerCache {
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn reserve(&mut self, positions: usize) {
        if positions <= self.capacity {
            return;
        }
        let new_capacity = positions.next_power_of_two().max(256);
        let (h, d) = (self.n_kv_heads, self.head_dim);
        for buf in [&mut self.k, &mut self.v] {
            let mut grown = vec![0f32; h * new_capacity * d];
            for head in 0..h {
                let old = &buf[head * self.capacity * d..(head + 1) * self.capacity * d];
                grown[head * new_capacity * d..head * new_capacity * d + old.len()]
                    .copy_from_slice(old);
            }
            *buf = grown;
        }
        self.capacity = new_capacity;
    }

    /// Stores rows `[n, n_kv_heads * head_dim]` of keys and values at positions `start..`.
    pub(crate) fn write(&mut self, start: usize, k: &[f32], v: &[f32]) {
        let (h, d, cap) = (self.n_kv_heads, self.head_dim, self.capacity);
        for (t, (k_row, v_row)) in k.chunks_exact(h * d).zip(v.chunks_exact(h * d)).enumerate() {
            for head in 0..h {
                let dst = (head * cap + start + t) * d;
                self.k[dst..dst + d].copy_from_slice(&k_row[head * d..(head + 1) * d]);
                self.v[dst..dst + d].copy_from_slice(&v_row[head * d..(head + 1) * d]);
            }
        }
    }
}
