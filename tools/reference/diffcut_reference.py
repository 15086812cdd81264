#!/usr/bin/env python3
"""DiffCut's model-free half: the published code run on synthetic feature maps, writing the
fixtures of crates/diffseg-core/tests/diffcut.rs.

The functions and classes under "Vendored" are copied verbatim from PaulCouairon/DiffCut at
commit aa16df45619515abe1d7a728ce7927ad1019f950 (the package is not on PyPI), with only
`"cuda"` replaced by `"cpu"`:
- class DiffCut            from diffcut/recursive_normalized_cut.py
- class MaskPooling        from tools/utils.py
- LocalAffinity..PAMR      from tools/pamr.py (itself from visinf/1-stage-wseg)
- pamr()                   from eval_diffcut.py (Benchmark_Segmentation.pamr, `self` dropped)
and `evaluate_refinement` below repeats eval_diffcut.py's calls around them (image resized
to 128² bilinear, PAMR, median filter).

The published `generate_masks` handles square maps only (it reshapes to img_size//32 on both
sides and passes dims=(h, h)). `RectangularDiffCut.generate_masks` is the same function with
those two places taking (h, w), used for the one non-square map.

Input: per map, a few regions in space (Voronoi cells of random seeds), each with a cluster
centre in feature space (some centres close to each other so the cut recurses over several
levels), plus Gaussian noise; and an RGB image (u8) of the same regions at 100² with their
own colours and noise, for PAMR.

Run from the repository root:  python3 tools/reference/diffcut_reference.py
Writes crates/diffseg-core/tests/fixtures/diffcut/diffcut.safetensors. Pass --time to time
the published generate_masks on 32×32×1280 features (DiffCut's SD 1.x layer at a 1024 input).
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.numpy import save_file
from scipy.ndimage import median_filter

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "crates/diffseg-core/tests/fixtures/diffcut"
MASK_SIZE = 128
ALPHA = 10
IMAGE_SIZE = 100
CHANNELS = 8

# name, (height, width), regions, groups of regions sharing a nearby centre, noise, tau, seed
MAPS = [
    ("blobs", (32, 32), 5, 5, 0.35, 0.5, 1),
    ("hierarchy", (32, 32), 6, 3, 0.25, 0.5, 2),
    ("noisy", (32, 32), 7, 7, 0.6, 0.6, 3),
    ("wide", (24, 40), 5, 4, 0.3, 0.5, 4),
]


# ============================================================================ Vendored
# ---- diffcut/recursive_normalized_cut.py (aa16df4), "cuda" -> "cpu"
class DiffCut:
    def get_affinity_matrix(self, affinity, level):
        size = affinity.shape[0]
        null_values_idx = set(torch.unique(torch.where(affinity==0)[0]).tolist())
        all_idx = set(np.arange(0, size, 1))
        if level == 0:
            idx2keep = list(all_idx)
            A = affinity
        else:
            idx2keep = list(all_idx - null_values_idx)
            A = affinity[:, idx2keep][idx2keep, :]
        D = self.get_degree_matrix(A)
        return A, D, idx2keep

    def get_degree_matrix(self, A):
        d_i = torch.sum(A, axis=1)
        D = torch.diag(d_i)
        return D

    def second_smallest_eigenvector(self, A, D):
        # get the second smallest eigenvector from affinity matrix
        D_inv_sqrt = torch.diag(1 / torch.diag(D) ** 0.5)
        try:
            _, eigenvectors = torch.linalg.eigh(D_inv_sqrt @ (D - A) @ D_inv_sqrt)
            second_smallest_vec = D_inv_sqrt @ eigenvectors[:, 1]
        except torch._C._LinAlgError:
            second_smallest_vec = None
        return second_smallest_vec

    def get_bipartition(self, y, A, D, k=100):
        xmin, xmax = y.min() * 0.99, y.max() * 0.99
        thresholds = torch.linspace(xmin, xmax, k)
        partitions = [1. * (y > thresh) for thresh in thresholds]
        N_cut_values = []
        L = D - A
        sum_D = torch.sum(D)
        diag_D = torch.diag(D)

        for x in partitions:
            x = 2 * x - 1
            k = torch.sum(diag_D * (x > 0)) / sum_D
            b = k / (1 - k)
            y = (1 + x) - b * (1 - x)
            E = (torch.t(y) @ L @ y) / (torch.t(y) @ D @ y)
            N_cut_values.append(E.item())

        ncut = min(N_cut_values)
        bipartition = partitions[np.argmin(N_cut_values)]
        return bipartition, ncut

    def get_masked_affinity_matrix(self, painting, affinity, mask):
        # mask out affinity matrix based on the painting matrix
        painting = painting + mask.unsqueeze(0)
        painting[painting > 0] = 1
        painting[painting <= 0] = 0
        mask_affinity = (torch.t(painting.reshape(1, -1)) @ painting.reshape(1, -1))
        affinity = affinity * (1 - mask_affinity)
        return affinity, painting

    def deterministic_vector_sign_flip(self, u):
        max_abs_idx = torch.argmax(torch.abs(u))
        sign = torch.sign(u[max_abs_idx])
        u *= sign
        return u

    def recursive_ncut(self, feats, tau=None, dims=(64, 64), painting=None, mask=None, accumulator_masks=None, level=0, alpha=10):
        """
        Implementation of recursive NCut.
        Inputs
        feats: the pixel/patch features of an image.
        tau: threshold value that stops the recursion.
        dims: dimension of the map from which the features are used.
        painting: registers the explored areas.
        mask: area of current bipartition.
        accumulator: registers the segmentation masks.
        level: counts the level of recursion.
        alpha: affinity matrix exponent
        """
        if level == 0:
            accumulator_masks = []
            feats = F.normalize(feats, p=2, dim=0)
            painting = torch.zeros(dims).to("cpu")
            mask = torch.zeros(dims).to("cpu")
            affinity = torch.t(feats) @ feats
            affinity = (affinity - affinity.min()) / (affinity.max() - affinity.min())
            affinity = affinity ** alpha

        if level > 0:
            affinity = feats

        # Mask the explored area in the affinity matrix
        affinity, painting = self.get_masked_affinity_matrix(painting, affinity, mask)

        # Construct a smaller affinity matrix (A) and degree matrix (D)
        A, D, idx2keep = self.get_affinity_matrix(affinity, level)

        if A.shape[0] > 1:
            # get the second smallest eigenvector
            second_smallest_vec = self.second_smallest_eigenvector(A, D)

            second_smallest_vec = self.deterministic_vector_sign_flip(second_smallest_vec)
            null_vec = torch.zeros((1, dims[0]*dims[1])).to("cpu")
            null_vec[:, idx2keep] = second_smallest_vec

            # get current graph bipartition
            bipartition, ncut = self.get_bipartition(second_smallest_vec, A, D)

            null_vec = torch.zeros((1, dims[0]*dims[1])).to("cpu")
            null_vec[:, idx2keep] = bipartition
            bipartition = 1. * null_vec.reshape(dims)

            if ncut < tau:
                accumulator_masks.append(bipartition)

                self.recursive_ncut(affinity, tau, dims, painting.to("cpu"), 1 - bipartition, accumulator_masks, level+1)
                self.recursive_ncut(affinity, tau, dims, painting.to("cpu"), bipartition, accumulator_masks, level+1)

        return accumulator_masks

    def assemble_clusters(self, clusters, h, w):
        mask = torch.zeros((h, w)).to("cpu")
        final_mask = torch.zeros((h, w)).to("cpu")
        max_value = 1
        for cluster_mask in clusters:
            mask += max_value * cluster_mask
            max_value = mask.max() + 1

        for i, cls_idx in enumerate(torch.unique(mask)):
            final_mask[mask==cls_idx] = i

        return final_mask

    def generate_masks(self, features, tau=0.5, mask_size=(128, 128), masks=None, alpha=10, img_size=1024):
        # Step 1: Recursive Feature Clustering
        h_mask, w_mask = mask_size
        mask_pooling = MaskPooling()
        feats = features.reshape(1, img_size//32, img_size//32, -1).permute(0, 3, 1, 2).to(torch.float32)
        feats_norm = F.normalize(feats, dim=1)
        _, c, h, w = feats_norm.shape

        if masks is None:
            x = feats_norm.reshape(c, h*w)
            clusters = self.recursive_ncut(x, tau=tau, dims=(h, h), alpha=alpha)

            if len(clusters) == 0:
                clusters.append(torch.zeros((h, w)).to("cpu"))

            # Assemble clusters
            masks = self.assemble_clusters(clusters, h, w)[None, None]

        # Step 2: Masked Spatial Marginal Mean
        clusters_embeddings = torch.zeros(len(torch.unique(masks)), c).to("cpu")

        for k, cls_idx in enumerate(torch.unique(masks)):
            mask = masks == cls_idx
            mask_embed = mask_pooling(feats_norm, mask)[0]
            clusters_embeddings[k, :] = mask_embed

        # Step 3: High-Resolution Concept Assignment
        # Feature upsampling
        upsampled_feats = torch.nn.Upsample(size=mask_size, mode='bilinear')(feats_norm)

        # Label association
        similarity_scores = torch.t(upsampled_feats.reshape(c, h_mask*w_mask)) @ torch.t(clusters_embeddings)
        masks = torch.argmax(similarity_scores, dim=1).reshape(1, 1, h_mask, w_mask)
        masks = masks.cpu().numpy().astype(int)

        return masks


# ---- tools/utils.py (aa16df4)
# Ref: https://github.com/NVlabs/ODISE/blob/e97b06c424c575fec9fc5368dd4b3e050d91abc4/odise/modeling/meta_arch/odise.py#L923
class MaskPooling(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x, mask):
        """
        Args:
            x: [B, C, H, W]
            mask: [B, Q, H, W]
        """
        if not x.shape[-2:] == mask.shape[-2:]:
            # reshape mask to x
            mask = F.interpolate(mask, size=x.shape[-2:], mode='nearest-exact')

        with torch.no_grad():
            mask = mask.detach()
            mask = (mask > 0).to(mask.dtype)
            denorm = mask.sum(dim=(-1, -2), keepdim=True) + 1e-8

        mask_pooled_x = torch.einsum(
            "bchw,bqhw->bqc",
            x,
            mask / denorm,
        )
        return mask_pooled_x


# ---- tools/pamr.py (aa16df4), "cuda" -> "cpu"
# Copyright 2020 TU Darmstadt
# Licnese: Apache 2.0 License.
# https://github.com/visinf/1-stage-wseg/blob/master/models/mods/pamr.py
class LocalAffinity(nn.Module):

    def __init__(self, dilations=[1]):
        super(LocalAffinity, self).__init__()
        self.dilations = dilations
        weight = self._init_aff()
        self.register_buffer('kernel', weight)

    def _init_aff(self):
        # initialising the shift kernel
        weight = torch.zeros(8, 1, 3, 3).to("cpu")

        for i in range(weight.size(0)):
            weight[i, 0, 1, 1] = 1

        weight[0, 0, 0, 0] = -1
        weight[1, 0, 0, 1] = -1
        weight[2, 0, 0, 2] = -1

        weight[3, 0, 1, 0] = -1
        weight[4, 0, 1, 2] = -1

        weight[5, 0, 2, 0] = -1
        weight[6, 0, 2, 1] = -1
        weight[7, 0, 2, 2] = -1

        self.weight_check = weight.clone()

        return weight

    def forward(self, x):

        self.weight_check = self.weight_check.type_as(x)
        assert torch.all(self.weight_check.eq(self.kernel))

        B,K,H,W = x.size()
        x = x.view(B*K,1,H,W)

        x_affs = []
        for d in self.dilations:
            x_pad = F.pad(x, [d]*4, mode='replicate')
            x_aff = F.conv2d(x_pad, self.kernel, dilation=d)
            x_affs.append(x_aff)

        x_aff = torch.cat(x_affs, 1)
        return x_aff.view(B,K,-1,H,W)

class LocalAffinityCopy(LocalAffinity):

    def _init_aff(self):
        # initialising the shift kernel
        weight = torch.zeros(8, 1, 3, 3).to("cpu")

        weight[0, 0, 0, 0] = 1
        weight[1, 0, 0, 1] = 1
        weight[2, 0, 0, 2] = 1

        weight[3, 0, 1, 0] = 1
        weight[4, 0, 1, 2] = 1

        weight[5, 0, 2, 0] = 1
        weight[6, 0, 2, 1] = 1
        weight[7, 0, 2, 2] = 1

        self.weight_check = weight.clone()
        return weight

class LocalStDev(LocalAffinity):

    def _init_aff(self):
        weight = torch.zeros(9, 1, 3, 3).to("cpu")
        weight.zero_()

        weight[0, 0, 0, 0] = 1
        weight[1, 0, 0, 1] = 1
        weight[2, 0, 0, 2] = 1

        weight[3, 0, 1, 0] = 1
        weight[4, 0, 1, 1] = 1
        weight[5, 0, 1, 2] = 1

        weight[6, 0, 2, 0] = 1
        weight[7, 0, 2, 1] = 1
        weight[8, 0, 2, 2] = 1

        self.weight_check = weight.clone()
        return weight

    def forward(self, x):
        # returns (B,K,P,H,W), where P is the number
        # of locations
        x = super(LocalStDev, self).forward(x)

        return x.std(2, keepdim=True)

class LocalAffinityAbs(LocalAffinity):

    def forward(self, x):
        x = super(LocalAffinityAbs, self).forward(x)
        return torch.abs(x)

#
# PAMR module
#
class PAMR(nn.Module):

    def __init__(self, num_iter=1, dilations=[1]):
        super(PAMR, self).__init__()

        self.num_iter = num_iter
        self.aff_x = LocalAffinityAbs(dilations)
        self.aff_m = LocalAffinityCopy(dilations)
        self.aff_std = LocalStDev(dilations)

    def forward(self, x, mask):
        mask = F.interpolate(mask, size=x.size()[-2:], mode="bilinear", align_corners=True)

        # x: [BxKxHxW]
        # mask: [BxCxHxW]
        B,K,H,W = x.size()
        _,C,_,_ = mask.size()

        x_std = self.aff_std(x)

        x = -self.aff_x(x) / (1e-8 + 0.1 * x_std)
        x = x.mean(1, keepdim=True)
        x = F.softmax(x, 2)

        for _ in range(self.num_iter):
            m = self.aff_m(mask)  # [BxCxPxHxW]
            mask = (m * x).sum(2)

        # xvals: [BxCxHxW]
        return mask


# ---- eval_diffcut.py (aa16df4): Benchmark_Segmentation.pamr without `self`
def pamr(labels, image):
    masks = torch.cat([1. * (labels == label) for label in torch.unique(labels)], dim=1)
    labels = PAMR(num_iter=10, dilations=[1, 2, 4, 8])(image, masks) # 1, 2, 4, 8
    labels = 1. * torch.argmax(labels, dim=1)
    labels = median_filter(labels.cpu().numpy(), 3).astype(int)
    return labels
# ============================================================================ end of vendored


class RectangularDiffCut(DiffCut):
    """`generate_masks` for an h x w map: the published function with (h, w) where it
    reshapes to (img_size//32, img_size//32) and passes dims=(h, h). Nothing else differs."""

    def generate_masks(self, features, tau=0.5, mask_size=(128, 128), masks=None, alpha=10, hw=(32, 32)):
        h_mask, w_mask = mask_size
        mask_pooling = MaskPooling()
        feats = features.reshape(1, hw[0], hw[1], -1).permute(0, 3, 1, 2).to(torch.float32)
        feats_norm = F.normalize(feats, dim=1)
        _, c, h, w = feats_norm.shape
        x = feats_norm.reshape(c, h*w)
        clusters = self.recursive_ncut(x, tau=tau, dims=(h, w), alpha=alpha)
        if len(clusters) == 0:
            clusters.append(torch.zeros((h, w)).to("cpu"))
        masks = self.assemble_clusters(clusters, h, w)[None, None]
        clusters_embeddings = torch.zeros(len(torch.unique(masks)), c).to("cpu")
        for k, cls_idx in enumerate(torch.unique(masks)):
            mask = masks == cls_idx
            mask_embed = mask_pooling(feats_norm, mask)[0]
            clusters_embeddings[k, :] = mask_embed
        upsampled_feats = torch.nn.Upsample(size=mask_size, mode='bilinear')(feats_norm)
        similarity_scores = torch.t(upsampled_feats.reshape(c, h_mask*w_mask)) @ torch.t(clusters_embeddings)
        masks = torch.argmax(similarity_scores, dim=1).reshape(1, 1, h_mask, w_mask)
        return masks.cpu().numpy().astype(int)


class Recording:
    """Mixin recording every candidate cut's value, to report how close each came to tau."""

    def get_bipartition(self, y, A, D, k=100):
        bipartition, ncut = super().get_bipartition(y, A, D, k)
        self.values.append(ncut)
        return bipartition, ncut


class RecordingDiffCut(Recording, DiffCut):
    values = []


class RecordingRectangularDiffCut(Recording, RectangularDiffCut):
    values = []


# ---------------------------------------------------------------- synthetic input
def regions(rows, columns, seeds):
    """Voronoi cell index of each point of a rows x columns grid over the unit square."""
    ys = (np.arange(rows) + 0.5) / rows
    xs = (np.arange(columns) + 0.5) / columns
    grid = np.stack(np.meshgrid(ys, xs, indexing="ij"), -1)
    distance = ((grid[:, :, None, :] - seeds[None, None]) ** 2).sum(-1)
    return distance.argmin(-1)


def synthetic_map(shape, count, groups, noise, seed):
    rng = np.random.default_rng(seed)
    height, width = shape
    seeds = rng.uniform(0.1, 0.9, size=(count, 2))
    group_centres = rng.normal(size=(groups, CHANNELS))
    # Regions beyond the groups share a group's centre, slightly moved: a finer level.
    centres = np.concatenate([group_centres, group_centres[: count - groups] + 0.6 * rng.normal(size=(count - groups, CHANNELS))])
    cells = regions(height, width, seeds)
    features = centres[cells] + noise * rng.normal(size=(height, width, CHANNELS))
    colours = rng.uniform(0.1, 0.9, size=(count, 3))
    pixels = regions(IMAGE_SIZE, IMAGE_SIZE, seeds)
    image = colours[pixels] + 0.05 * rng.normal(size=(IMAGE_SIZE, IMAGE_SIZE, 3))
    image = np.clip(np.round(image * 255), 0, 255).astype(np.uint8).transpose(2, 0, 1)
    return features.astype(np.float32), np.ascontiguousarray(image)


def evaluate_refinement(pred, image_u8, median=True):
    """eval_diffcut.py's refinement calls: image [0, 1] resized to the mask size, then pamr()."""
    images = torch.from_numpy(image_u8.astype(np.float32) / 255.0)[None]
    pred = torch.Tensor(pred)
    im = F.interpolate(images[0][None], size=(MASK_SIZE, MASK_SIZE), mode='bilinear')
    if median:
        return pamr(pred, im)[None]
    masks = torch.cat([1. * (pred == label) for label in torch.unique(pred)], dim=1)
    refined = PAMR(num_iter=10, dilations=[1, 2, 4, 8])(im, masks)
    return torch.argmax(refined, dim=1).numpy().astype(int)[None]


def write_fixtures():
    tensors, metadata = {}, {}
    for name, shape, count, groups, noise, tau, seed in MAPS:
        features, image = synthetic_map(shape, count, groups, noise, seed)
        height, width = shape
        hooked = torch.from_numpy(features).reshape(1, height * width, CHANNELS)
        if height == width:
            cutter = RecordingDiffCut()
            cutter.values = []
            labels = cutter.generate_masks(hooked, tau, mask_size=(MASK_SIZE, MASK_SIZE), alpha=ALPHA, img_size=height * 32)
        else:
            cutter = RecordingRectangularDiffCut()
            cutter.values = []
            labels = cutter.generate_masks(hooked, tau, mask_size=(MASK_SIZE, MASK_SIZE), alpha=ALPHA, hw=shape)
        refined = evaluate_refinement(labels, image)
        refined_only = evaluate_refinement(labels, image, median=False)
        margin = min(abs(v - tau) for v in cutter.values)
        accepted = sum(v < tau for v in cutter.values)
        print(f"{name}: {height}x{width}, {len(cutter.values)} cuts tried, {accepted} accepted, "
              f"closest cut value to tau {tau}: {margin:.4f} away; segments {len(np.unique(labels))}, "
              f"after PAMR {len(np.unique(refined_only))}, after PAMR + median {len(np.unique(refined))}")
        tensors[f"{name}.features"] = features
        tensors[f"{name}.image"] = image
        tensors[f"{name}.labels"] = labels.reshape(MASK_SIZE, MASK_SIZE).astype(np.uint8)
        tensors[f"{name}.labels_pamr"] = refined_only.reshape(MASK_SIZE, MASK_SIZE).astype(np.uint8)
        tensors[f"{name}.labels_pamr_median"] = refined.reshape(MASK_SIZE, MASK_SIZE).astype(np.uint8)
        metadata[name] = {"tau": tau, "alpha": ALPHA, "mask_size": MASK_SIZE, "cut_values": cutter.values}
    FIXTURES.mkdir(parents=True, exist_ok=True)
    path = FIXTURES / "diffcut.safetensors"
    save_file(tensors, path, metadata={"maps": json.dumps(metadata), "source": "PaulCouairon/DiffCut@aa16df45619515abe1d7a728ce7927ad1019f950"})
    print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size} bytes)")


def time_generate_masks(runs):
    """The published generate_masks on 32x32x1280 features with 6 regions, tau 0.5, alpha 10."""
    rng = np.random.default_rng(0)
    seeds = rng.uniform(0.1, 0.9, size=(6, 2))
    cells = regions(32, 32, seeds)
    features = rng.normal(size=(6, 1280))[cells] + 0.5 * rng.normal(size=(32, 32, 1280))
    hooked = torch.from_numpy(features.astype(np.float32)).reshape(1, 1024, 1280)
    cutter = DiffCut()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        labels = cutter.generate_masks(hooked, 0.5, mask_size=(MASK_SIZE, MASK_SIZE), alpha=ALPHA, img_size=1024)
        times.append(time.perf_counter() - start)
    print(f"published generate_masks, 32x32x1280, torch {torch.__version__} CPU, {torch.get_num_threads()} threads: "
          f"median {np.median(times) * 1000:.1f} ms over {runs} runs, {len(np.unique(labels))} segments")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time", type=int, metavar="RUNS", help="only time generate_masks, RUNS times")
    args = parser.parse_args()
    if args.time:
        time_generate_masks(args.time)
    else:
        write_fixtures()
