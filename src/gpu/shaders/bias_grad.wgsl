// d_b[j] = Σ_r dZ[r, j]: the bias gradient, one invocation per column, written into the
// flat gradient buffer at the bias's offset.
struct Bg { rows: u32, cols: u32, out_off: u32, _p0: u32, _p1: u32, _p2: u32, _p3: u32, _p4: u32 }
@group(0) @binding(0) var<storage, read> dz: array<f32>;
@group(0) @binding(1) var<storage, read_write> grads: array<f32>;
@group(0) @binding(2) var<uniform> u: Bg;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let j = g.x;
    if (j >= u.cols) { return; }
    var s = 0.0;
    for (var r = 0u; r < u.rows; r++) { s += dz[r * u.cols + j]; }
    grads[u.out_off + j] = s;
}
