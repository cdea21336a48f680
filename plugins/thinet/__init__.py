"""ThiNet (Luo et al. 2017): next-layer greedy channel selection and least-squares scaling."""
