"""rosinality's model.py naming rules as tables of state-dict names and shapes, written from a reading of
his code (not imported from it): the networks' tests and the export tests check against them."""
import math


HIS_CHANNELS = lambda cm: {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * cm, 128: 128 * cm,
                           256: 64 * cm, 512: 32 * cm, 1024: 16 * cm}


def his_generator_table(size, style_dim, n_mlp, cm):
    ch, D = HIS_CHANNELS(cm), style_dim
    t = {}
    for i in range(1, n_mlp + 1):
        t[f"style.{i}.weight"], t[f"style.{i}.bias"] = (D, D), (D,)

    def styled(prefix, cin, cout, up):
        t[f"{prefix}.conv.weight"] = (1, cout, cin, 3, 3)
        if up:
            t[f"{prefix}.conv.blur.kernel"] = (4, 4)
        t[f"{prefix}.conv.modulation.weight"], t[f"{prefix}.conv.modulation.bias"] = (cin, D), (cin,)
        t[f"{prefix}.noise.weight"], t[f"{prefix}.activate.bias"] = (1,), (cout,)

    def to_rgb(prefix, cin, up):
        if up:
            t[f"{prefix}.upsample.kernel"] = (4, 4)
        t[f"{prefix}.conv.weight"] = (1, 3, cin, 1, 1)
        t[f"{prefix}.conv.modulation.weight"], t[f"{prefix}.conv.modulation.bias"] = (cin, D), (cin,)
        t[f"{prefix}.bias"] = (1, 3, 1, 1)

    t["input.input"] = (1, ch[4], 4, 4)
    styled("conv1", ch[4], ch[4], False)
    to_rgb("to_rgb1", ch[4], False)
    log = int(math.log2(size))
    for i in range((log - 2) * 2 + 1):
        r = 2 ** ((i + 5) // 2)
        t[f"noises.noise_{i}"] = (1, 1, r, r)
    cin = ch[4]
    for j, k in enumerate(range(3, log + 1)):
        cout = ch[2 ** k]
        styled(f"convs.{2 * j}", cin, cout, True)
        styled(f"convs.{2 * j + 1}", cout, cout, False)
        to_rgb(f"to_rgbs.{j}", cout, True)
        cin = cout
    return t


def his_discriminator_table(size, cm):
    ch = HIS_CHANNELS(cm)
    log = int(math.log2(size))
    t = {"convs.0.0.weight": (ch[size], 3, 1, 1), "convs.0.1.bias": (ch[size],)}
    cin = ch[size]
    for i, k in enumerate(range(log, 2, -1), start=1):
        cout = ch[2 ** (k - 1)]
        t.update({f"convs.{i}.conv1.0.weight": (cin, cin, 3, 3), f"convs.{i}.conv1.1.bias": (cin,),
                  f"convs.{i}.conv2.0.kernel": (4, 4), f"convs.{i}.conv2.1.weight": (cout, cin, 3, 3),
                  f"convs.{i}.conv2.2.bias": (cout,), f"convs.{i}.skip.0.kernel": (4, 4),
                  f"convs.{i}.skip.1.weight": (cout, cin, 1, 1)})
        cin = cout
    c4 = ch[4]
    t.update({"final_conv.0.weight": (c4, cin + 1, 3, 3), "final_conv.1.bias": (c4,),
              "final_linear.0.weight": (c4, c4 * 16), "final_linear.0.bias": (c4,),
              "final_linear.1.weight": (1, c4), "final_linear.1.bias": (1,)})
    return t
