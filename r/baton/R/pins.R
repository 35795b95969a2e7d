# The [environment] requirements: every package the model needs, pinned to the version
# installed here, as name==Version.

# The packages given (by default the one that provides predict() for the model's class)
# and all they depend on (Depends, Imports, LinkingTo, recursively), leaving out base R's
# own packages; each pinned to its DESCRIPTION's Version string (e.g. 4.7-1.1, not
# packageVersion()'s 4.7.1.1). Sorted by name, in the C locale.
pin_packages <- function(model, packages = NULL) {
  if (is.null(packages)) packages <- predict_package(model)
  if (!is.character(packages) || anyNA(packages)) {
    stop("packages must be a character vector of package names", call. = FALSE)
  }
  installed <- installed.packages()
  base <- rownames(installed)[installed[, "Priority"] %in% "base"]
  packages <- setdiff(unique(packages), c(base, "R"))
  if (length(packages) == 0) return(character(0))
  absent <- setdiff(packages, rownames(installed))
  if (length(absent)) {
    stop("packages not installed here, so their versions are unknown: ",
         paste(absent, collapse = ", "), call. = FALSE)
  }
  deps <- package_dependencies(packages, db = installed,
                               which = c("Depends", "Imports", "LinkingTo"),
                               recursive = TRUE)
  needed <- setdiff(unique(c(packages, unlist(deps, use.names = FALSE))), c(base, "R"))
  needed <- sort(needed, method = "radix")  # the C locale's order, the same everywhere
  versions <- vapply(needed, function(p) {
    d <- suppressWarnings(packageDescription(p))
    if (!is.list(d) || is.null(d$Version)) {
      stop("package ", p, " is needed (a dependency of ", paste(packages, collapse = ", "),
           ") but not installed, so its version is unknown", call. = FALSE)
    }
    d$Version
  }, "")
  paste0(needed, "==", versions)
}

# The package whose predict() method the model dispatches to: the namespace of the first
# S3 method found over class(model), or for an S4 object the package of its class. None
# (character(0)) when predict() is base R's own (stats) or defined outside any package.
predict_package <- function(model) {
  for (cls in class(model)) {
    method <- getS3method("predict", cls, optional = TRUE)
    if (is.null(method)) next
    where <- environmentName(environment(method))
    if (where %in% rownames(installed.packages())) return(where)
    warning("predict() for class '", cls, "' is defined outside any package (in ",
            if (nzchar(where)) where else "an unnamed environment", "): the runner will ",
            "not have it; put it in a package and pass packages = \"thatpackage\"",
            call. = FALSE)
    return(character(0))
  }
  if (isS4(model) && !is.null(attr(class(model), "package"))) {
    return(attr(class(model), "package"))
  }
  character(0)
}
