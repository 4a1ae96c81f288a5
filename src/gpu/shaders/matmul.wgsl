// C (m×n) = op(A) (m×k) · op(B) (k×n), every matrix row-major inside a flat buffer at an
// element offset. op transposes when the flag says the buffer holds the other shape:
//   forward   Z = H · W        (no flags)
//   backward  dW = Hᵀ · dZ     (TRANS_A: H is stored B×in)
//             dH = dZ · Wᵀ     (TRANS_B: W is stored in×out)
// Each 16×16 workgroup computes a 64×64 tile of C, each invocation a 4×4 block of it
// (rows lid.y + 16i, columns lid.x + 16j), from 64×16 slices of A and 16×64 of B staged
// in workgroup memory. The block lives in four vec4 registers: no arrays indexed at run
// time, which GPU compilers would put in slow local memory.
struct Mm {
    m: u32, n: u32, k: u32, flags: u32,
    a_off: u32, b_off: u32, c_off: u32, _pad: u32,
}
@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@group(0) @binding(3) var<uniform> u: Mm;

const TILE: u32 = 64u;
const KT: u32 = 16u;
var<workgroup> ta: array<f32, 1024>; // [64 rows][16 k]
var<workgroup> tb: array<f32, 1024>; // [16 k][64 cols]

fn load_a(row: u32, col: u32) -> f32 {
    if (row >= u.m || col >= u.k) { return 0.0; }
    if ((u.flags & 1u) != 0u) { return a[u.a_off + col * u.m + row]; }
    return a[u.a_off + row * u.k + col];
}

fn load_b(row: u32, col: u32) -> f32 {
    if (row >= u.k || col >= u.n) { return 0.0; }
    if ((u.flags & 2u) != 0u) { return b[u.b_off + col * u.k + row]; }
    return b[u.b_off + row * u.n + col];
}

// Slice element `idx` (0..1024) of A's 64×16 and of B's 16×64 into workgroup memory.
fn stage(idx: u32, row0: u32, col0: u32, k0: u32) {
    ta[idx] = load_a(row0 + idx / KT, k0 + idx % KT);
    tb[idx] = load_b(k0 + idx / TILE, col0 + idx % TILE);
}

fn store(row: u32, col: u32, v: vec4<f32>) {
    if (row >= u.m) { return; }
    let base = u.c_off + row * u.n;
    if (col < u.n) { c[base + col] = v.x; }
    if (col + 16u < u.n) { c[base + col + 16u] = v.y; }
    if (col + 32u < u.n) { c[base + col + 32u] = v.z; }
    if (col + 48u < u.n) { c[base + col + 48u] = v.w; }
}

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = wg.y * TILE;
    let col0 = wg.x * TILE;
    let t = lid.y * 16u + lid.x; // 0..256
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    let tiles = (u.k + KT - 1u) / KT;
    for (var kt = 0u; kt < tiles; kt++) {
        let k0 = kt * KT;
        stage(t, row0, col0, k0);
        stage(t + 256u, row0, col0, k0);
        stage(t + 512u, row0, col0, k0);
        stage(t + 768u, row0, col0, k0);
        workgroupBarrier();
        for (var kk = 0u; kk < KT; kk++) {
            let bk = kk * TILE + lid.x;
            let bv = vec4<f32>(tb[bk], tb[bk + 16u], tb[bk + 32u], tb[bk + 48u]);
            acc0 = fma(vec4<f32>(ta[lid.y * KT + kk]), bv, acc0);
            acc1 = fma(vec4<f32>(ta[(lid.y + 16u) * KT + kk]), bv, acc1);
            acc2 = fma(vec4<f32>(ta[(lid.y + 32u) * KT + kk]), bv, acc2);
            acc3 = fma(vec4<f32>(ta[(lid.y + 48u) * KT + kk]), bv, acc3);
        }
        workgroupBarrier();
    }
    let col = col0 + lid.x;
    store(row0 + lid.y, col, acc0);
    store(row0 + lid.y + 16u, col, acc1);
    store(row0 + lid.y + 32u, col, acc2);
    store(row0 + lid.y + 48u, col, acc3);
}
