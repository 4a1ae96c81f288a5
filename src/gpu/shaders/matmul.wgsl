// C (m×n) = op(A) (m×k) · op(B) (k×n), every matrix row-major inside a flat buffer at an
// element offset. op transposes when the flag says the buffer holds the other shape:
//   forward   Z = H · W        (no flags)
//   backward  dW = Hᵀ · dZ     (TRANS_A: H is stored B×in)
//             dH = dZ · Wᵀ     (TRANS_B: W is stored in×out)
// Each 16×16 workgroup computes a 64×64 tile of C, each invocation a 4×4 block of it, from
// 64×16 slices of A and 16×64 of B staged in workgroup memory.
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

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = wg.y * TILE;
    let col0 = wg.x * TILE;
    let t = lid.y * 16u + lid.x; // 0..256
    var acc: array<array<f32, 4>, 4>;
    for (var i = 0u; i < 4u; i++) { for (var j = 0u; j < 4u; j++) { acc[i][j] = 0.0; } }
    let tiles = (u.k + KT - 1u) / KT;
    for (var kt = 0u; kt < tiles; kt++) {
        let k0 = kt * KT;
        // 1024 elements of each slice, 4 per invocation.
        for (var e = 0u; e < 4u; e++) {
            let idx = t + e * 256u;
            // A slice: 64 rows × 16 k, index = r * 16 + kk
            let ar = idx / KT;
            let ak = idx % KT;
            ta[idx] = load_a(row0 + ar, k0 + ak);
            // B slice: 16 k × 64 cols, index = kk * 64 + cc
            let bk = idx / TILE;
            let bc = idx % TILE;
            tb[idx] = load_b(k0 + bk, col0 + bc);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < KT; kk++) {
            var av: array<f32, 4>;
            var bv: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) { av[i] = ta[(lid.y + i * 16u) * KT + kk]; }
            for (var j = 0u; j < 4u; j++) { bv[j] = tb[kk * TILE + lid.x + j * 16u]; }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) { acc[i][j] = fma(av[i], bv[j], acc[i][j]); }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let row = row0 + lid.y + i * 16u;
        for (var j = 0u; j < 4u; j++) {
            let col = col0 + lid.x + j * 16u;
            if (row < u.m && col < u.n) { c[u.c_off + row * u.n + col] = acc[i][j]; }
        }
    }
}
