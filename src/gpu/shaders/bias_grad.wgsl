// d_b[j] = Σ_r dZ[r, j]: the bias gradient, written into the flat gradient buffer at the
// bias's offset. A 16×16 workgroup takes 16 columns; its 16 rows of invocations each sum
// every 16th row of a column, then one adds the 16 partial sums (a chain of 256 dependent
// loads per column would leave the GPU waiting on memory).
struct Bg { rows: u32, cols: u32, out_off: u32, _p0: u32, _p1: u32, _p2: u32, _p3: u32, _p4: u32 }
@group(0) @binding(0) var<storage, read> dz: array<f32>;
@group(0) @binding(1) var<storage, read_write> grads: array<f32>;
@group(0) @binding(2) var<uniform> u: Bg;

var<workgroup> partial: array<f32, 256>; // [16 row groups][16 columns]

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let j = wg.x * 16u + lid.x;
    var s = 0.0;
    if (j < u.cols) {
        for (var r = lid.y; r < u.rows; r += 16u) { s += dz[r * u.cols + j]; }
    }
    partial[lid.y * 16u + lid.x] = s;
    workgroupBarrier();
    if (lid.y == 0u && j < u.cols) {
        var total = 0.0;
        for (var g = 0u; g < 16u; g++) { total += partial[g * 16u + lid.x]; }
        grads[u.out_off + j] = total;
    }
}
