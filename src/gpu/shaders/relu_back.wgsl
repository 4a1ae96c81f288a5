// d_h *= [h > 0]: ReLU's derivative, from the layer's output (h > 0 exactly when z > 0).
struct Rb { n: u32, _p0: u32, _p1: u32, _p2: u32, _p3: u32, _p4: u32, _p5: u32, _p6: u32 }
@group(0) @binding(0) var<storage, read_write> d: array<f32>;
@group(0) @binding(1) var<storage, read> h: array<f32>;
@group(0) @binding(2) var<uniform> u: Rb;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let stride = nw.x * 256u;
    for (var i = g.x; i < u.n; i += stride) {
        d[i] = d[i] * select(0.0, 1.0, h[i] > 0.0);
    }
}
