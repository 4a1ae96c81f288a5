// Z[r, j] += bias[j], then ReLU (max(z, 0)) on hidden layers: the end of a layer's forward.
struct Ba { rows: u32, cols: u32, b_off: u32, relu: u32, _p0: u32, _p1: u32, _p2: u32, _p3: u32 }
@group(0) @binding(0) var<storage, read_write> z: array<f32>;
@group(0) @binding(1) var<storage, read> p: array<f32>;
@group(0) @binding(2) var<uniform> u: Ba;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let total = u.rows * u.cols;
    let stride = nw.x * 256u;
    for (var i = g.x; i < total; i += stride) {
        let v = z[i] + p[u.b_off + i % u.cols];
        if (u.relu != 0u) { z[i] = max(v, 0.0); } else { z[i] = v; }
    }
}
