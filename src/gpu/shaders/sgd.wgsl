// SGD with heavy-ball momentum and L2 weight decay (PyTorch's formulation):
//   g' = g + λ·p,   v = μ·v + g',   p = p − η·v
struct Sg { n: u32, lr: f32, momentum: f32, weight_decay: f32, _p0: u32, _p1: u32, _p2: u32, _p3: u32 }
@group(0) @binding(0) var<storage, read_write> p: array<f32>;
@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<storage, read_write> v: array<f32>;
@group(0) @binding(3) var<uniform> u: Sg;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let stride = nw.x * 256u;
    for (var i = gid.x; i < u.n; i += stride) {
        let gi = g[i] + u.weight_decay * p[i];
        let vi = u.momentum * v[i] + gi;
        v[i] = vi;
        p[i] = p[i] - u.lr * vi;
    }
}
