"""Declares emverse-diffusion's components (imports nothing heavy)."""

from emverse.components import Component
from emverse.hookspecs import hookimpl

_P = "emverse_diffusion.params:"


@hookimpl
def emverse_components():
    # noise schedules (t ∈ [0, 1], t = 0 clean)
    yield Component("noise_schedule", "diffusion.linear_beta", "emverse_diffusion.schedules:LinearBetaSchedule",
                    _P + "LinearBetaParams", "DDPM linear-β noise schedule (β₁, β_T, T steps)")
    yield Component("noise_schedule", "diffusion.cosine", "emverse_diffusion.schedules:CosineSchedule",
                    _P + "CosineParams", "Cosine noise schedule with offset s (Nichol & Dhariwal)")
    yield Component("noise_schedule", "diffusion.logsnr", "emverse_diffusion.schedules:LogSNRSchedule",
                    _P + "LogSNRParams", "Noise schedule given in logSNR: α² = sigmoid(λ), σ² = sigmoid(−λ)")
    # guidance weight schedules
    yield Component("guidance_weight", "diffusion.constant", "emverse_diffusion.guidance.weights:ConstantWeight",
                    _P + "ConstantWeightParams", "Constant guidance weight")
    yield Component("guidance_weight", "diffusion.alpha", "emverse_diffusion.guidance.weights:AlphaWeight",
                    _P + "AlphaWeightParams", "Guidance weight ∝ α_t^power (grows as noise falls)")
    yield Component("guidance_weight", "diffusion.shifted_sigmoid",
                    "emverse_diffusion.guidance.weights:ShiftedSigmoidWeight", _P + "ShiftedSigmoidParams",
                    "Annealed guidance weight sigmoid(−k(λ−λ₀)): strong at high noise, → 0 at the end")
    # samplers
    yield Component("sampler", "diffusion.ddpm", "emverse_diffusion.samplers.ddpm:DDPMSampler",
                    _P + "DDPMParams", "DDPM ancestral sampling (posterior or β variance)")
    yield Component("sampler", "diffusion.ddim", "emverse_diffusion.samplers.ddim:DDIMSampler",
                    _P + "DDIMParams", "DDIM with stochasticity η")
    yield Component("sampler", "diffusion.dpmpp_2m", "emverse_diffusion.samplers.dpmpp_2m:DPMSolverPP2MSampler",
                    _P + "DPMSolverParams", "DPM-Solver++(2M), second-order multistep ODE solver")
    yield Component("sampler", "diffusion.dpmpp_2m_sde",
                    "emverse_diffusion.samplers.dpmpp_2m:DPMSolverPP2MSDESampler", _P + "DPMSolverSDEParams",
                    "DPM-Solver++(2M) SDE variant")
    yield Component("sampler", "diffusion.euler", "emverse_diffusion.samplers.euler:EulerSampler",
                    _P + "EulerParams", "Euler (Karras Alg. 2) with optional churn")
    # guidance
    yield Component("guidance", "diffusion.dps", "emverse_diffusion.guidance.dps:DPSGuidance",
                    _P + "DPSParams", "DPS: correct x̂₀ with a likelihood gradient through any forward model")
    # prior, data, objective
    yield Component("prior", "diffusion.mlp", "emverse_diffusion.components:MLPDiffusionPrior",
                    _P + "MLPPriorParams", "Diffusion prior over vectors with an MLP denoiser (optionally conditional)")
    yield Component("dataset", "diffusion.simulated", "emverse_diffusion.components:SimulatedData",
                    _P + "SimulatedDataParams", "Training pairs: x from a prior, y simulated by the forward model")
    yield Component("dataset", "diffusion.zarr", "emverse_diffusion.components:ZarrDataset",
                    _P + "ZarrDataParams", "Training pairs read from a Zarr group")
    yield Component("objective", "diffusion.denoising", "emverse_diffusion.training:DiffusionTraining",
                    _P + "DenoisingParams",
                    "Diffusion loss of a network prior: eps/x0/v target, logSNR weighting, uniform or adaptive t")
    # metrics
    yield Component("metric", "uq.nrmse", "emverse_diffusion.metrics.uq:NRMSE", _P + "NRMSEParams",
                    "NRMSE per parameter normalised by range (references 1/√12, 1/√6)")
    yield Component("metric", "uq.calibration", "emverse_diffusion.metrics.uq:Calibration",
                    _P + "CalibrationParams", "Coverage of central intervals vs nominal level; calibration error")
    yield Component("metric", "uq.sharpness", "emverse_diffusion.metrics.uq:Sharpness",
                    _P + "SharpnessParams", "Mean central-interval width normalised by range")
    yield Component("metric", "uq.crps", "emverse_diffusion.metrics.uq:CRPS", None,
                    "Continuous ranked probability score of posterior samples")
    yield Component("metric", "uq.sbc", "emverse_diffusion.metrics.uq:SBC", _P + "SBCParams",
                    "Simulation-based calibration rank histograms")
    yield Component("metric", "image.psnr", "emverse_diffusion.metrics.image:PSNR", _P + "ImageParams",
                    "PSNR (dB) of 2D/3D images normalised per instance to [0, 1]")
    yield Component("metric", "image.ssim", "emverse_diffusion.metrics.image:SSIM", _P + "ImageParams",
                    "SSIM of 2D/3D images normalised per instance to [0, 1]")
    yield Component("metric", "stats.paired_bootstrap", "emverse_diffusion.metrics.stats:PairedBootstrap",
                    _P + "BootstrapParams", "Paired bootstrap CI and p-value comparing two methods")
