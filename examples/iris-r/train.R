# Trains a random forest on R's iris data and packages it as a Baton bundle:
# examples/iris-r/bundle (replaced if it exists).
#
#   Rscript examples/iris-r/train.R
#
# Needs R with the randomForest package (Debian: apt-get install r-cran-randomforest). The
# baton R package is installed from r/baton into a temporary library first, so nothing is
# installed into your own library.

library(randomForest)

# The repository's root, from this script's own path: the script runs from any folder.
script <- sub("^--file=", "", grep("^--file=", commandArgs(FALSE), value = TRUE)[1])
root <- normalizePath(file.path(dirname(script), "..", ".."))
setwd(root)

# The baton package, from r/baton, into a library that goes away with this R session.
lib <- file.path(tempdir(), "library")
dir.create(lib)
log <- suppressWarnings(system2(file.path(R.home("bin"), "R"),
                               c("CMD", "INSTALL", paste0("--library=", lib), "r/baton"),
                               stdout = TRUE, stderr = TRUE))
if (!is.null(attr(log, "status"))) {
  stop("R CMD INSTALL r/baton failed:\n", paste(log, collapse = "\n"))
}
library(baton, lib.loc = lib)

# Species from the four measurements.
set.seed(42)
model <- randomForest(Species ~ Sepal.Length + Sepal.Width + Petal.Length + Petal.Width,
                      data = iris, ntree = 50)
print(model)

# Ten rows of the predictors, some of each species, two of them near the boundary between
# versicolor and virginica, where the forest is less sure.
rows <- c(1, 25, 50, 51, 71, 84, 100, 101, 120, 134)

bundle <- "examples/iris-r/bundle"
unlink(bundle, recursive = TRUE)
baton_package(model, sample = iris[rows, 1:4], name = "iris", path = bundle,
              description = "Iris species from petal and sepal measurements (random forest)",
              owner = "data-science@example.com")
