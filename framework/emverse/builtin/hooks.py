"""The core's own components: generic tasks, refiners and a metric."""

from emverse.components import Component
from emverse.hookspecs import hookimpl

P = "emverse.builtin.params:"


@hookimpl
def emverse_components():
    yield Component("task", "simulate", "emverse.builtin.tasks:SimulateTask",
                    "emverse.builtin.params:SimulateParams",
                    "Dataset campaign: draws of the unknowns and their observations into a resumable Zarr store")
    yield Component("task", "train", "emverse.builtin.tasks:TrainTask", P + "TrainParams",
                    "Train the [prior]'s network on the [dataset] with the [objective] (resumable)")
    yield Component("task", "infer", "emverse.builtin.tasks:InferTask",
                    "emverse.builtin.params:InferParams",
                    "Posterior samples for simulated observations; metrics against the truth")
    yield Component("task", "refine", "emverse.builtin.tasks:RefineTask",
                    "emverse.builtin.params:RefineParams",
                    "Fit a forward model's parameter vector to a simulated observation")
    yield Component("task", "evaluate", "emverse.builtin.tasks:EvaluateTask", P + "EvaluateParams",
                    "Score every [[compare]] method on the same simulated test set; paired bootstrap")
    yield Component("method", "core.refine", "emverse.builtin.methods:RefineMethod", P + "RefineMethodParams",
                    "A refiner (+ parametrization, likelihood) from a perturbed start, in [[compare]]")
    yield Component("method", "core.infer", "emverse.builtin.methods:InferMethod", P + "InferMethodParams",
                    "Posterior draws from a prior + sampler (+ guidance); estimate = their mean")
    yield Component("refiner", "core.adam", "emverse.builtin.refiners:AdamRefiner",
                    "emverse.builtin.params:AdamParams", "Adam on every trainable parameter")
    yield Component("refiner", "core.lbfgs", "emverse.builtin.refiners:LBFGSRefiner",
                    "emverse.builtin.params:LBFGSParams", "L-BFGS (strong Wolfe) on every trainable parameter")
    lk = "emverse.likelihoods:"
    yield Component("likelihood", "core.gaussian", lk + "GaussianLikelihood", P + "GaussianLikelihoodParams",
                    "Additive Gaussian noise of standard deviation sigma")
    yield Component("likelihood", "core.poisson", lk + "PoissonLikelihood", P + "PoissonLikelihoodParams",
                    "Counting noise at a dose (electrons per unit of the observation)")
    yield Component("likelihood", "core.amplitude", lk + "AmplitudeLikelihood", P + "AmplitudeLikelihoodParams",
                    "Gaussian on amplitudes sqrt(I) (variance-stabilised for counts)")
    yield Component("likelihood", "core.weighted_intensity", lk + "WeightedIntensityLikelihood",
                    P + "IntensityLikelihoodParams", "chi^2/2 with the observation's sigma(I)")
    yield Component("likelihood", "core.rw", lk + "RwLikelihood", P + "AnyLikelihoodParams",
                    "Rw^2 = sum (y - y_pred)^2 / sum y^2 (PDF agreement)")
    yield Component("likelihood", "core.ncc", lk + "NCCLikelihood", P + "IntensityLikelihoodParams",
                    "1 - zero-normalised cross-correlation of each image (scale/offset free)")
    yield Component("prior", "core.uniform", "emverse.builtin.priors:UniformPrior", None,
                    "Uniform over the forward model's parameter box (physics-only posteriors)")
    yield Component("correction", "core.laplace", "emverse.builtin.corrections:LaplaceMixture",
                    P + "LaplaceParams", "Multistart Fisher scoring from approximate draws; Laplace mixture of the modes")
    yield Component("correction", "core.importance", "emverse.builtin.corrections:ImportanceResampling",
                    P + "ImportanceParams",
                    "The Laplace mixture as a proposal, importance-resampled under the exact likelihood")
    yield Component("parametrization", "core.parameter_vector",
                    "emverse.builtin.parametrizations:ParameterVector", P + "ParameterVectorParams",
                    "A forward model's parameter vector in normalised units, optionally a free subset")
    yield Component("metric", "core.rmse", "emverse.builtin.metrics:RMSE", None,
                    "Root-mean-square error of a prediction (or posterior mean) per component")
