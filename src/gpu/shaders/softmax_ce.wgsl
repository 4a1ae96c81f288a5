// Softmax cross-entropy, one invocation per row of logits (B × C):
//   loss_i = max + ln Σ exp(z − max) − z[y]       (written to stats[2i])
//   correct_i = [argmax z = y]                      (stats[2i + 1]; the first max wins)
//   dZ = (softmax(z) − onehot(y)) / B               (the gradient of the mean loss)
struct Ce { rows: u32, classes: u32, inv_batch: f32, _p0: u32, _p1: u32, _p2: u32, _p3: u32, _p4: u32 }
@group(0) @binding(0) var<storage, read> z: array<f32>;
@group(0) @binding(1) var<storage, read> labels: array<u32>;
@group(0) @binding(2) var<storage, read_write> dz: array<f32>;
@group(0) @binding(3) var<storage, read_write> stats: array<f32>;
@group(0) @binding(4) var<uniform> u: Ce;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let r = g.x;
    if (r >= u.rows) { return; }
    let base = r * u.classes;
    let y = labels[r];
    var mx = z[base];
    var arg = 0u;
    for (var j = 1u; j < u.classes; j++) {
        let v = z[base + j];
        if (v > mx) { mx = v; arg = j; }
    }
    var sum = 0.0;
    for (var j = 0u; j < u.classes; j++) {
        let e = exp(z[base + j] - mx);
        dz[base + j] = e;
        sum += e;
    }
    stats[2u * r] = mx + log(sum) - z[base + y];
    stats[2u * r + 1u] = select(0.0, 1.0, arg == y);
    let scale = u.inv_batch / sum;
    for (var j = 0u; j < u.classes; j++) {
        var d = dz[base + j] * scale;
        if (j == y) { d -= u.inv_batch; }
        dz[base + j] = d;
    }
}
